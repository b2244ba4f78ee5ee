#!/usr/bin/perl
# intermissionctl_fleet.t: `intermissionctl run` and `pause` against a fleet of three nginx
# instances (start_instance), each in front of the same Perl backend.
# 1. All three, listed in an --endpoints file (with comments), requests held on each while
#    COMMAND runs: exit 0, --json: outcome success, every endpoint paused, drained,
#    resumed, held peak and released 2; every request answered 200 and recorded once.
# 2. One refuses to pause (its control location has `deny all`: 403): exit 1, the message
#    names it and the step; the two others were paused ([error] line in their error logs)
#    and resumed again; the summary table shows all three; requests sent to the fleet meanwhile
#    are answered 200.
# 3. One is down (its port is closed): the same, "connection refused".
# 4. One still has a request in flight at --drain-timeout: exit 1, all three resumed,
#    the slow and the held requests answered.
# 5. `pause` is all or nothing: with the refusing one, the two others are resumed again.
# Every case ends with nothing paused on any instance.
use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $TPL = <<'CONF';
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    server {
        listen 127.0.0.1:%%CTL_PORT%%;
        location /ctl/ {
            intermission_control;
        }
        location /denied/ {
            intermission_control;
            deny all;
        }
    }
}
CONF

my @I = map { start_instance($_, $TPL) } qw(a b c);
my %I = map { $_->name => $_ } @I;
sub ep { my ($i, $loc) = @_; 'http://127.0.0.1:' . $i->ctl_port . '/' . ($loc // 'ctl') . '/' }
my @E = map { ep($_) } @I;

sub hold {
    my ($inst, $path) = @_;
    my $c = http_connect($inst->port);
    $c->send_request(path => $path, keepalive => 0);
    return $c;
}

sub count_uri { my ($uri) = @_; scalar grep { $_->{uri} eq $uri } backend_log() }

sub all_answered_once {
    my ($what, $paths, $resps) = @_;
    is(scalar(grep { $_ && $_->[0] == 200 } @$resps), scalar @$paths,
       "$what: all " . @$paths . " answered 200");
    my @bad = grep { count_uri($_) != 1 } @$paths;
    ok(!@bad, "$what: each recorded by the backend exactly once") or diag("not once: @bad");
}

sub none_paused {
    my ($what) = @_;
    my @p;
    for my $i (@I) {
        my $j = $i->ctl_status;
        push @p, $i->name . (defined $j ? ' paused' : ' no status')
            if !$j || grep { $_->{paused} } @{ $j->{scopes} };
    }
    ok(!@p, "$what: nothing paused on any instance") or diag("@p");
}

sub wait_all_paused {
    my (@insts) = @_;
    return wait_for(sub { !grep { my $s = $_->scope_status('default'); !$s || !$s->{paused} } @insts }, 10);
}

sub notices {
    my ($inst, $what) = @_;
    return scalar $inst->error_log_lines(qr/\[error\].*intermission: scope "default" $what by/);
}

# ---- 1. the whole fleet
{
    my $file = write_file('fleet.txt', "# the fleet\n$E[0]\n\n  $E[1]   # b\n# c:\n$E[2]\n");
    my $h = intermissionctl_bg('run', '--endpoints', $file, '--json', '--auto-resume', '1m',
                               '--', gated_command('f1'));
    ok(gate_started('f1', 10), '1: COMMAND started');
    my (@c, @paths);
    for my $i (@I) {
        for my $n (1 .. 2) {
            my $p = '/f1/' . $i->name . "/$n";
            push @paths, $p;
            push @c, hold($i, $p);
        }
    }
    for my $i (@I) {
        ok(wait_for(sub { my $s = $i->scope_status('default'); $s && $s->{held} == 2 }),
           '1: two requests held on ' . $i->name);
    }
    gate_open('f1');
    my ($rc) = bg_wait($h, 20);
    is($rc, 0, '1: exit 0') or diag(bg_stderr($h));
    my @r = read_responses(10, @c);
    all_answered_once('1', \@paths, \@r);
    my $j = eval { JSON::PP->new->decode(bg_output($h)) };
    ok($j, '1: --json: one JSON document on stdout') or diag(bg_output($h));
    is($j && $j->{outcome}, 'success', '1: json: outcome success');
    is($j && $j->{exit_code}, 0, '1: json: exit_code 0');
    is_deeply([map { $_->{endpoint} } @{ $j->{endpoints} || [] }], \@E,
              '1: json: the three endpoints, in order');
    for my $e (@{ $j->{endpoints} || [] }) {
        ok($e->{paused} && $e->{drained} && $e->{resumed},
           "1: json: $e->{endpoint} paused, drained, resumed");
        is($e->{released}, 2, "1: json: $e->{endpoint} released 2");
        is($e->{held_peak}, 2, "1: json: $e->{endpoint} held peak 2");
        ok(defined $e->{paused_for_ms} && $e->{paused_for_ms} > 0, "1: json: $e->{endpoint} paused_for_ms");
    }
    like(bg_stderr($h), qr/^endpoints=\Q$E[0] $E[1] $E[2]\E$/m,
         "1: COMMAND's stdout goes to stderr with --json, INTERMISSION_ENDPOINTS lists the fleet");
    none_paused('1');
    $_->close for @c;
}

# ---- 2. one refuses (403)
{
    my %n0 = map { $_->name => [notices($_, 'paused'), notices($_, 'resumed')] } @I;
    my @eps = ($E[0], $E[1], ep($I{c}, 'denied'));
    my @c = map { hold($_, '/f2/' . $_->name) } @I;
    my ($rc, $out, $err) = intermissionctl('run', map({ ('--endpoint', $_) } @eps), '--', 'true');
    is($rc, 1, '2: exit 1');
    like($err, qr/^intermissionctl: \Q$eps[2]\E: pause: HTTP 403 Forbidden$/m,
         '2: the message names the endpoint and the step');
    like($err, qr/run failed at step 'pause': 1 of 3 endpoints could not be paused/,
         '2: the run failed at the pause');
    for my $i (@I[0, 1]) {
        my $n = $i->name;
        ok(wait_for(sub { notices($i, 'paused') == $n0{$n}[0] + 1
                          && notices($i, 'resumed') == $n0{$n}[1] + 1 }),
           "2: $n was paused and resumed again");
    }
    is(notices($I{c}, 'paused'), $n0{c}[0], '2: c was not paused');
    like($out, qr/^\Q$eps[0]\E\s+resumed\s/m, '2: summary: a resumed');
    like($out, qr/^\Q$eps[1]\E\s+resumed\s/m, '2: summary: b resumed');
    like($out, qr/^\Q$eps[2]\E\s+not paused\s.*pause: HTTP 403 Forbidden$/m,
         '2: summary: c not paused, its error');
    my @r = read_responses(10, @c);
    all_answered_once('2', [map { '/f2/' . $_->name } @I], \@r);
    none_paused('2');
    $_->close for @c;
}

# ---- 3. one is down
{
    stop_instance('c');
    my ($rc, $out, $err) = intermissionctl('run', map({ ('--endpoint', $_) } @E), '--', 'true');
    is($rc, 1, '3: exit 1');
    like($err, qr/^intermissionctl: \Q$E[2]\E: pause: connection refused$/m,
         '3: message names c, the pause, the error');
    like($out, qr/^\Q$E[0]\E\s+resumed\s/m, '3: a resumed');
    like($out, qr/^\Q$E[1]\E\s+resumed\s/m, '3: b resumed');
    $I{c}->start;
    none_paused('3');
}

# ---- 4. a drain timeout on one member
{
    my $slow = hold($I{b}, '/f4/slow?sleep=3000');
    ok(wait_for(sub { my $s = $I{b}->scope_status('default'); $s && $s->{inflight} == 1 }),
       '4: a slow request in flight on b');
    my $h = intermissionctl_bg('run', map({ ('--endpoint', $_) } @E), '--drain-timeout', '700ms',
                               '--', 'true');
    ok(wait_all_paused(@I), '4: all three paused');
    my @c = map { hold($_, '/f4/held/' . $_->name) } @I;
    my ($rc) = bg_wait($h, 20);
    is($rc, 1, '4: exit 1');
    like(bg_stderr($h),
         qr/^intermissionctl: \Q$E[1]\E: drain: drain timed out after 0\.7s: 1 request\(s\) still in flight(?:: .*)?$/m,
         '4: the message names b and the drain');
    like(bg_output($h), qr/^\Q$_\E\s+resumed\s/m, "4: $_ resumed") for @E;
    my @r = read_responses(10, @c, $slow);
    all_answered_once('4', [(map { '/f4/held/' . $_->name } @I), '/f4/slow?sleep=3000'], \@r);
    none_paused('4');
    $_->close for @c, $slow;
}

# ---- 5. pause: all or nothing
{
    my @eps = ($E[0], $E[1], ep($I{c}, 'denied'));
    my ($rc, $out, $err) = intermissionctl('pause', '--json', map({ ('--endpoint', $_) } @eps));
    is($rc, 1, '5: pause with one refusing: exit 1');
    like($err, qr/\Q$eps[2]\E: pause: HTTP 403/, '5: message');
    my $j = eval { JSON::PP->new->decode($out) };
    ok($j && !$j->{ok}, '5: json: not ok');
    is_deeply([map { $_->{rolled_back} ? 1 : 0 } @{ $j->{endpoints} || [] }], [1, 1, 0],
              '5: json: the two paused ones were resumed again');
    none_paused('5');

    ($rc, $out, $err) = intermissionctl('pause', map({ ('--endpoint', $_) } @E));
    is($rc, 0, '5: pause of the whole fleet: exit 0') or diag($err);
    ok(wait_all_paused(@I), '5: all three paused');
    ($rc, $out, $err) = intermissionctl('resume', map({ ('--endpoint', $_) } @E));
    is($rc, 0, '5: resume of the whole fleet: exit 0') or diag($err);
    none_paused('5');
}

finish();
