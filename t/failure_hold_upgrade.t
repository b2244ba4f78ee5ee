#!/usr/bin/perl
# failure_hold_upgrade.t: the down state of `intermission_on_failure hold` across a binary
# upgrade and a full restart, through `intermission_state_file` (a reload keeps it in the
# zone: failure_hold_compose.t (5)). The old configuration has a main server (OLD_PORT) and
# a control server (CTLOLD_PORT) the new one lacks, the new one PORT2 and CTL2_PORT, so
# that the test reaches each generation on purpose.
# (a) The backend stopped, A held by the old generation, the scope down: the state file has
#     a "down u <since> 502" line.
# (b) USR2: the new generation starts down (its own zone, from the file), with the same
#     down_since and went_down 0 (not a new outage), and logs so; a request B to the new
#     generation (PORT2) is held without trying the backend first (at most one connect
#     attempt for it per check interval, as the readiness check). Seen with the module of
#     2026-12-01: the new generation started up, and sent B (and every request it took) to
#     the dead backend before finding out on its own.
# (c) The backend comes back: A (old generation) and B (new) are answered 200 and reached
#     the backend once each; neither generation is down; the file has no down line.
# (d) A full restart during an outage: down, C held, nginx stopped: C's client gets the
#     502 nginx would have given (a stop releases what is held, and the dead backend fails
#     it; seen with the module of 2026-12-01: C was held again, and its connection left
#     open when the worker exited: "open socket left" alerts). Started again, the scope
#     starts down with the same down_since, D is held; the backend back, D is answered 200.
# (e) A restart with a configuration in which no location of the scope holds on a
#     failure: the scope starts up (nothing would ever check it), logged; a request goes
#     to the backend at once.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $INTERVAL = 1;    # intermission_on_failure's default interval, s

sub conf {
    my ($gen, %o) = @_;
    my $hold = $o{no_hold} ? '' : 'intermission_on_failure hold;';
    my $loc = "location /u/ { intermission u; $hold proxy_pass http://127.0.0.1:%%UBACKEND_PORT%%; }";
    my $ctl = 'location /ctl/ { intermission_control; add_header X-Worker $pid always; }';
    my ($main, $c) = $gen eq 'old' ? ('OLD_PORT', 'CTLOLD_PORT') : ('PORT2_PORT', 'CTL2_PORT');
    return <<"CONF";
worker_processes 2;
http {
    intermission_state_file %%PREFIX%%/intermission.state;
    server { listen 127.0.0.1:%%PORT%%; $loc }
    server { listen 127.0.0.1:%%CTL_PORT%%; $ctl }
    server { listen 127.0.0.1:%%$main%%; $loc }
    server { listen 127.0.0.1:%%$c%%; $ctl }
}
CONF
}

my $state = prefix() . '/intermission.state';
sub gen_scope { my ($gen) = @_; scope_status('u', port => port($gen eq 'old' ? 'CTLOLD_PORT' : 'CTL2_PORT')) }
sub state_text { read_file_text($state) // '' }

# how many times each of @uris reached backend $name
sub at_backend {
    my ($name, @uris) = @_;
    my %n = map { $_ => 0 } @uris;
    $n{ $_->{uri} }++ for grep { exists $n{ $_->{uri} } } backend_log($name);
    return \%n;
}

unlink $state;
start_backend(name => 'UBACKEND');
my $bport = backend_port('UBACKEND');
start_nginx(conf('old'), upgradable => 1);

# (a) down in the old generation
stop_backend('UBACKEND');
my $a = send_only(port('OLD_PORT'), '/u/a');
ok(wait_for(sub { my $s = gen_scope('old'); $s && $s->{down} }, $INTERVAL + 3), '(a) A failed: the scope is down');
my $since = (gen_scope('old') || {})->{down_since};
ok($since, '(a) down_since set');
like(state_text(), qr/^down u \d+ 502$/m, '(a) the state file records the scope down')
    or diag(state_text());

# (b) the new generation starts down
my $u = upgrade_nginx(conf('new'));
my $s = gen_scope('new') || {};
note('new generation after USR2: ' . JSON::PP->new->canonical->encode($s));
is($s->{down}, 1, '(b) the new generation starts down');
is($s->{down_since}, $since, '(b) ... with the same down_since');
is(($s->{counters} || {})->{went_down}, 0, '(b) ... not counted as a new outage');
ok(scalar error_log_lines(qr/scope "u" starts down \(for \d+ ms\), as the state file/),
   '(b) logged: starts down, as the state file says');
my $t0 = time;
my $b = send_only(port('PORT2'), '/u/b');
ok(wait_for(sub { my $n = gen_scope('new'); $n && $n->{held} == 1 }, 2), '(b) B held by the new generation');
ok(none_readable(1, $a, $b), '(b) neither A nor B answered');
# B may be the readiness check: one attempt at once (the restored check is due), one more
# per interval.
my $tries = connect_failures('/u/b');
cmp_ok($tries, '<=', 1 + int((time - $t0) / (0.8 * $INTERVAL)), "(b) B tried the dead backend only as the readiness check ($tries)");

# (c) the backend is back
start_backend(name => 'UBACKEND', port => $bport, keep_log => 1);
my @r = read_responses($INTERVAL + 3, $a, $b);
is($r[0] && $r[0][0], 200, '(c) A answered 200 (old generation)');
is($r[1] && $r[1][0], 200, '(c) B answered 200 (new generation)');
$_->close for $a, $b;
is_deeply(at_backend('UBACKEND', '/u/a', '/u/b'), { '/u/a' => 1, '/u/b' => 1 }, '(c) each reached the backend once');
ok(wait_for(sub { my ($o, $n) = (gen_scope('old'), gen_scope('new')); $o && $n && !$o->{down} && !$n->{down} }, 3),
   '(c) neither generation is down');
ok(wait_for(sub { state_text() !~ /^down /m }, 3), '(c) the state file has no down line') or diag(state_text());

kill 'WINCH', $u->{old_master};
ok(wait_for(sub { !grep { pid_alive($_) } @{ $u->{old_workers} } }, 10), 'the old workers exit');
kill 'QUIT', $u->{old_master};
ok(wait_pid_exit($u->{old_master}, 10), 'the old master exits');
stop_nginx();

# (d) a full restart during an outage
start_nginx(conf('old'));
stop_backend('UBACKEND');
my $c = send_only(port('OLD_PORT'), '/u/c');
ok(wait_down('u', $INTERVAL + 3), '(d) C failed: the scope is down');
$since = (scope_status('u') || {})->{down_since};
stop_nginx();
@r = read_responses(1, $c);
is($r[0] && $r[0][0], 502, '(d) nginx stopped: C gets the 502 nginx would have given');
$c->close;
start_nginx(conf('old'));
$s = scope_status('u') || {};
is($s->{down}, 1, '(d) after a restart the scope starts down');
is($s->{down_since}, $since, '(d) ... with the same down_since');
my $d = send_only(port('OLD_PORT'), '/u/d');
ok(wait_held('u', 1), '(d) D held');
ok(none_readable(0.5, $d), '(d) D not answered');
start_backend(name => 'UBACKEND', port => $bport, keep_log => 1);
@r = read_responses($INTERVAL + 3, $d);
is($r[0] && $r[0][0], 200, '(d) D answered 200 once the backend is back');
$d->close;
ok(wait_down('u', 3, 0), '(d) up');

# (e) a restart into a configuration that does not hold the scope on a failure
stop_backend('UBACKEND');
my $e = send_only(port('OLD_PORT'), '/u/e');
ok(wait_down('u', $INTERVAL + 3), '(e) the scope is down');
stop_nginx();
$e->close;
like(state_text(), qr/^down u /m, '(e) the file says down');
start_backend(name => 'UBACKEND', port => $bport, keep_log => 1);
start_nginx(conf('old', no_hold => 1));
is((scope_status('u') || {})->{down}, 0, '(e) the scope starts up');
ok(scalar error_log_lines(qr/the state file says scope "u" is down, but no location of the configuration holds its requests on a failure: starting up/),
   '(e) logged why');
my ($st) = http_get(port('OLD_PORT'), '/u/f');
is($st, 200, '(e) a request goes to the backend');

finish();
