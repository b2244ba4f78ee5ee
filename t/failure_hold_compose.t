#!/usr/bin/perl
# failure_hold_compose.t: how a hold on a failure (`intermission_on_failure hold`) ends
# other than by the backend coming back, and how it composes with a pause and a reload.
# Each block has a scope and a backend of its own.
# (1) A backend that does not come back, `intermission_max_time 2s`: 3 requests sent
#     0.3 s apart are each answered 502 at about their own deadline (not before 1.5 s,
#     within 4 s of their arrival); held 0 afterwards, counters.gave_up 3, the scope
#     still down (nothing brings it up but an answer), nothing reached the backend. With
#     `intermission_on_timeout reject`: 503 with a Retry-After header, counted in gave_up
#     or rejected. The backend comes back: a new request of each scope is answered 200
#     (within interval + 2 s: it is held because the scope is down, and its trial
#     succeeds), the scope is no longer down, and none of the answered requests ever
#     reaches the backend.
# (2) A client that leaves: A is held because of its failure; once the scope is down, B
#     and C are held without trying the backend (no "connect() failed" line for them).
#     A's and B's clients close: counters.aborted grows by 2 within 2 s, held 1. The
#     backend comes back: C is answered 200; A and B never reach it, and retried grows
#     by at most 1 (C: whether a request held because the scope is down, never tried,
#     counts as retried is left open).
# (3) A pause, then the failure: scope paused, backend stopped, R1 held by the pause. A
#     resume while the backend is down (the scope not known to be down yet) sends R1,
#     which fails and is held again: not answered within 1.5 s, the scope goes down
#     within interval + 1 s, not paused, held 1. The backend comes back: R1 is answered
#     200 and reached the backend once; down false.
# (4) The failure, then a pause: backend stopped, R2 held because of its failure, the
#     scope down; a pause, R3 held. A resume while the scope is down does not send the
#     held requests into the failure (0.5 s later there is no "connect() failed" line for
#     R3; R2 is the oldest, the one the trials send); its answer says released 0, down,
#     waiting 2, as the log, intermissionctl status (STATE down) and intermissionctl resume
#     do (seen with the module of 2026-12-01: "released 2", and intermissionctl said the
#     scope was running and that it released 2). Paused again, the backend comes back:
#     R2 and R3 stay held for interval + 1.5 s and nothing reaches the backend (a trial
#     would send a request to a backend under maintenance). The resume: both are answered
#     200 within interval + 2 s, each reached the backend once, R2 first; down false.
# (5) A reload: backend stopped, A held, the scope down. After a reload the scope is
#     still down with the same down_since (the state is in the shared zone), A is still
#     held (by the old worker); a new request B is held too (held 2). The backend comes
#     back: A and B are answered 200, each reached the backend once; the old worker then
#     exits; down false, held 0.
use strict;
use warnings;
use Test::More;
use List::Util qw(max);
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $INTERVAL = 1;    # intermission_on_failure's default interval, s

my $CONF = <<'CONF';
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location /dl/ {
            intermission dl;
            intermission_on_failure hold;
            intermission_max_time 2s;
            proxy_pass http://127.0.0.1:%%DLBACKEND_PORT%%;
        }
        location /dlrej/ {
            intermission dlrej;
            intermission_on_failure hold;
            intermission_max_time 2s;
            intermission_on_timeout reject;
            proxy_pass http://127.0.0.1:%%DLBACKEND_PORT%%;
        }
        location /gone/ {
            intermission gone;
            intermission_on_failure hold;
            proxy_pass http://127.0.0.1:%%GONEBACKEND_PORT%%;
        }
        location /pz/ {
            intermission pz;
            intermission_on_failure hold;
            proxy_pass http://127.0.0.1:%%PZBACKEND_PORT%%;
        }
        location /rl/ {
            intermission rl;
            intermission_on_failure hold;
            proxy_pass http://127.0.0.1:%%RLBACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

start_nginx($CONF);
my $port = port('PORT');

sub delta { my ($c1, $c0, $k) = @_; ($c1->{$k} // 0) - ($c0->{$k} // 0) }

# how many times each of @uris reached backend $name
sub at_backend {
    my ($name, @uris) = @_;
    my %want = map { $_ => 1 } @uris;
    my %n = map { $_ => 0 } @uris;
    $n{ $_->{uri} }++ for grep { $want{ $_->{uri} } } backend_log($name);
    return \%n;
}

# ---- (1) the backend does not come back: the error at the deadline
{
    my %c0 = map { $_ => scope_counters($_) } qw(dl dlrej);
    my $bport = backend_port('DLBACKEND');
    stop_backend('DLBACKEND');
    my @sent;
    for my $i (1 .. 3) {
        for my $scope (qw(dl dlrej)) {
            push @sent, { scope => $scope, uri => "/$scope/$i", c => send_only($port, "/$scope/$i"),
                          t => time };
        }
        sleep 0.3;
    }
    ok(wait_held('dl', 3) && wait_held('dlrej', 3), '(1) 3 held in each scope');
    my @r = read_responses(5, map { $_->{c} } @sent);
    for my $i (0 .. $#sent) {
        my ($s, $r) = ($sent[$i], $r[$i]);
        my $want = $s->{scope} eq 'dl' ? 502 : 503;
        is($r && $r->[0], $want, "(1) $s->{uri}: $want at its deadline");
        my $after = $r ? $r->[3] - $s->{t} : -1;
        ok($after >= 1.5 && $after <= 4 * slow(), "(1) $s->{uri}: not before 1.5 s, within 4 s")
            or diag(sprintf('answered %.3f s after it was sent', $after));
        like($r && $r->[1]{'retry-after'} // '', qr/^\d+$/, "(1) $s->{uri}: Retry-After")
            if $s->{scope} eq 'dlrej';
    }
    $_->{c}->close for @sent;
    for my $scope (qw(dl dlrej)) {
        my $s = scope_status($scope) || {};
        is($s->{held}, 0, "(1) $scope: held 0 afterwards");
        is($s->{down}, 1, "(1) $scope: still down (nothing answered)");
    }
    is(delta(scope_counters('dl'), $c0{dl}, 'gave_up'), 3, '(1) dl: counters.gave_up 3');
    my $cr = scope_counters('dlrej');
    is(max(delta($cr, $c0{dlrej}, 'gave_up'), delta($cr, $c0{dlrej}, 'rejected')), 3,
       '(1) dlrej: the 3 counted in gave_up or rejected')
        or diag(explain($cr));
    note('dlrej counters: ' . JSON::PP->new->canonical->encode($cr));

    start_backend(name => 'DLBACKEND', port => $bport, keep_log => 1);
    my @new = map { send_only($port, "/$_/new") } qw(dl dlrej);
    @r = read_responses($INTERVAL + 2, @new);
    is($r[0] && $r[0][0], 200, '(1) dl: the backend is back, a new request is answered 200');
    is($r[1] && $r[1][0], 200, '(1) dlrej: the same');
    $_->close for @new;
    ok(wait_down('dl', 2, 0), '(1) dl: no longer down');
    ok(wait_down('dlrej', 2, 0), '(1) dlrej: no longer down');
    sleep 0.3;
    my $n = at_backend('DLBACKEND', map { $_->{uri} } @sent);
    is(scalar(grep { $_ } values %$n), 0, '(1) none of the requests answered at their deadline reached the backend')
        or diag(explain($n));
}

# ---- (2) a client that leaves while held because the scope is down
{
    my $c0 = scope_counters('gone');
    my $bport = backend_port('GONEBACKEND');
    stop_backend('GONEBACKEND');
    my $a = send_only($port, '/gone/a');
    ok(wait_for(sub { delta(scope_counters('gone'), $c0, 'failed') >= 1 }), '(2) A failed and is held');
    ok(wait_down('gone', $INTERVAL + 1), '(2) the scope is down');
    my $b = send_only($port, '/gone/b');
    my $c = send_only($port, '/gone/c');
    ok(wait_held('gone', 3), '(2) A, B and C held');
    ok(none_readable(0.5, $a, $b, $c), '(2) none answered');
    is(connect_failures('/gone/b') + connect_failures('/gone/c'), 0,
       '(2) B and C were held without trying the backend');
    my $s1 = scope_status('gone') || {};
    $a->close;
    $b->close;
    my $s;
    ok(wait_for(sub { $s = scope_status('gone');
                      $s && delta($s->{counters}, $s1->{counters}, 'aborted') == 2 && $s->{held} == 1 }, 2),
       '(2) A and B left: counters.aborted +2, held 1') or diag(explain($s));
    start_backend(name => 'GONEBACKEND', port => $bport, keep_log => 1);
    my ($r) = read_responses($INTERVAL + 2, $c);
    is($r && $r->[0], 200, '(2) C answered 200 once the backend is back');
    $c->close;
    ok(wait_down('gone', 2, 0), '(2) not down');
    sleep $INTERVAL + 0.5;
    is_deeply(at_backend('GONEBACKEND', '/gone/a', '/gone/b', '/gone/c'),
              { '/gone/a' => 0, '/gone/b' => 0, '/gone/c' => 1 },
              '(2) A and B never reached the backend, C once');
    cmp_ok(delta(scope_counters('gone'), $c0, 'retried'), '<=', 1, '(2) counters.retried: A and B are not in it');
}

# ---- (3) paused, then the backend fails: a resume sends the request, which is held again
{
    my $bport = backend_port('PZBACKEND');
    is(scalar ctl('POST', 'enable', 'scope=pz'), 200, '(3) pz paused');
    stop_backend('PZBACKEND');
    my $r1 = send_only($port, '/pz/r1');
    ok(wait_held('pz', 1), '(3) R1 held by the pause');
    ok(none_readable(0.5, $r1), '(3) R1 not answered');
    is(scalar ctl('POST', 'disable', 'scope=pz'), 200, '(3) resumed while the backend is down');
    ok(none_readable(1.5, $r1), '(3) R1 not answered: it failed and is held again');
    cmp_ok(connect_failures('/pz/r1'), '>=', 1, '(3) R1 was sent (a "connect() failed" line)');
    ok(wait_down('pz', $INTERVAL + 1), '(3) the scope is down');
    my $s = scope_status('pz') || {};
    is($s->{paused}, 0, '(3) not paused');
    is($s->{held}, 1, '(3) held 1');
    start_backend(name => 'PZBACKEND', port => $bport, keep_log => 1);
    my ($r) = read_responses($INTERVAL + 2, $r1);
    is($r && $r->[0], 200, '(3) R1 answered 200 once the backend is back');
    $r1->close;
    is_deeply(at_backend('PZBACKEND', '/pz/r1'), { '/pz/r1' => 1 }, '(3) R1 reached the backend once');
    ok(wait_down('pz', 2, 0), '(3) not down');
}

# ---- (4) the backend fails, then a pause: coming back while paused keeps holding
{
    my $bport = backend_port('PZBACKEND');
    stop_backend('PZBACKEND');
    my $r2 = send_only($port, '/pz/r2');
    ok(wait_down('pz', $INTERVAL + 2), '(4) R2 failed, the scope is down');
    is(scalar ctl('POST', 'enable', 'scope=pz'), 200, '(4) paused');
    my $r3 = send_only($port, '/pz/r3');
    ok(wait_held('pz', 2), '(4) R2 and R3 held');
    my ($rst, undef, $rj) = ctl('POST', 'disable', 'scope=pz');
    is($rst, 200, '(4) resumed while the scope is down');
    my ($rs) = @{ ($rj || {})->{scopes} || [] };
    is($rs && $rs->{released}, 0, '(4) ... the answer releases none');
    ok($rs && $rs->{down}, '(4) ... says the scope is down');
    is($rs && $rs->{waiting}, 2, '(4) ... and that 2 wait for the backend');
    ok(scalar error_log_lines(qr/scope "pz" resumed by \S+ while it is down: its 2 held request\(s\) wait/),
       '(4) ... and the log says so');
    my ($irc, $iout) = intermissionctl('status', '--endpoint', 'http://127.0.0.1:' . port('CTL_PORT') . ctl_prefix(), '--scope', 'pz');
    like($iout // '', qr/\bpz\s+down\s/, '(4) intermissionctl status: STATE down');
    like($iout // '', qr/scope pz is down \(/, '(4) ... with why');
    ok(none_readable(0.5, $r2, $r3), '(4) neither answered');
    is(connect_failures('/pz/r3'), 0, '(4) the resume did not send R3 into the failure');
    is(scalar ctl('POST', 'enable', 'scope=pz'), 200, '(4) paused again');
    ($irc, $iout) = intermissionctl('resume', '--endpoint', 'http://127.0.0.1:' . port('CTL_PORT') . ctl_prefix(), '--scope', 'pz');
    like($iout // '', qr/scope pz is down: its 2 held requests wait/, '(4) intermissionctl resume: says they wait for the backend');
    is(scalar ctl('POST', 'enable', 'scope=pz'), 200, '(4) paused once more');
    start_backend(name => 'PZBACKEND', port => $bport, keep_log => 1);
    ok(none_readable($INTERVAL + 1.5, $r2, $r3), '(4) the backend is back while paused: both still held');
    is_deeply(at_backend('PZBACKEND', '/pz/r2', '/pz/r3'), { '/pz/r2' => 0, '/pz/r3' => 0 },
              '(4) ... and nothing was sent to it');
    my $t = time;
    is(scalar ctl('POST', 'disable', 'scope=pz'), 200, '(4) resumed');
    my @r = read_responses($INTERVAL + 2, $r2, $r3);
    is($r[0] && $r[0][0], 200, '(4) R2 answered 200');
    is($r[1] && $r[1][0], 200, '(4) R3 answered 200');
    my $last = max(map { $_->[3] } grep { $_ } @r);
    ok(defined $last && $last - $t <= ($INTERVAL + 2) * slow(), '(4) ... within interval + 2 s of the resume');
    $_->close for $r2, $r3;
    is_deeply(at_backend('PZBACKEND', '/pz/r2', '/pz/r3'), { '/pz/r2' => 1, '/pz/r3' => 1 },
              '(4) each reached the backend once');
    is_deeply([map { $_->{uri} } grep { $_->{uri} =~ m{^/pz/r[23]$} } backend_log('PZBACKEND')],
              ['/pz/r2', '/pz/r3'], '(4) R2 first');
    ok(wait_down('pz', 2, 0), '(4) not down');
}

# ---- (5) the down state survives a reload
{
    my $bport = backend_port('RLBACKEND');
    stop_backend('RLBACKEND');
    my $a = send_only($port, '/rl/a');
    ok(wait_down('rl', $INTERVAL + 2), '(5) A failed, the scope is down');
    my $since = (scope_status('rl') || {})->{down_since};
    ok(defined $since, '(5) down_since set');
    my ($old, $new) = reload_nginx();
    my $s = scope_status('rl') || {};
    is($s->{down}, 1, '(5) still down after the reload');
    is($s->{down_since}, $since, '(5) down_since unchanged by the reload');
    is($s->{held}, 1, '(5) A still held (by the old worker)');
    ok(scalar(grep { pid_alive($_) } @$old), '(5) the old worker is alive, holding A');
    my $b = send_only($port, '/rl/b');
    ok(wait_held('rl', 2), '(5) a new request B is held too: held 2');
    ok(none_readable(1, $a, $b), '(5) neither answered');
    # B may be the readiness check (any held request can be): no more than one a check.
    cmp_ok(connect_failures('/rl/b'), '<=', 1 + int(1.5 / $INTERVAL),
           '(5) B is sent to the dead backend only as a readiness check');
    start_backend(name => 'RLBACKEND', port => $bport, keep_log => 1);
    my @r = read_responses($INTERVAL + 3, $a, $b);
    is($r[0] && $r[0][0], 200, '(5) A answered 200 once the backend is back');
    is($r[1] && $r[1][0], 200, '(5) B answered 200');
    $_->close for $a, $b;
    is_deeply(at_backend('RLBACKEND', '/rl/a', '/rl/b'), { '/rl/a' => 1, '/rl/b' => 1 },
              '(5) each reached the backend once');
    ok(wait_for(sub { !grep { pid_alive($_) } @$old }, 5), '(5) the old worker exits');
    ok(wait_down('rl', 2, 0), '(5) not down');
    is((scope_status('rl') || {})->{held}, 0, '(5) held 0');
}

finish();
