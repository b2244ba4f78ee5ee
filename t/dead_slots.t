#!/usr/bin/perl
# dead_slots.t: a process that died takes its counts with it; what it held or waited for
# counts nowhere once it is gone.
# 1. max_held: worker_processes 1, intermission_max_held 2. Paused, 2 requests held; a
#    reload (same configuration) leaves them in the old worker; the old worker is killed
#    with SIGKILL (the master does not respawn a worker of an old generation). Then held=0;
#    after a resume and a new pause, a new request is held (not answered 503 for the dead
#    worker's 2), a second too, and a third gets 503 (max_held still works); the resume
#    answers both 200.
# 2. Drain waiters: worker_processes 1. A slow request in flight in scope "slow" and a
#    drain of "slow" waiting for it; the worker is killed with SIGKILL and respawned. The
#    module's eventfd (made by the master, never read: its count grows by one per write)
#    must not be written for each request of "slow" that ends in the new worker, where
#    nobody waits: 100 requests one after another make it grow by at most 2.
#    (eventfd-count in /proc/<pid>/fdinfo is hex on Linux; the test checks that a few
#    pauses and resumes make it grow by a few.)
# The master's "exited on signal 9" alerts are expected.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

allow_alerts(qr/exited on signal 9/);

my $port = port('PORT');

# ---------------------------------------------------------------- 1. max_held
my $CONF1 = <<'CONF';
worker_processes 1;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            intermission_max_held 2;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF
start_nginx($CONF1);
is(scalar ctl('POST', 'pause'), 200, '1: paused');
my @old = map { http_connect($port) } 1 .. 2;
$old[$_]->send_request(path => "/old/$_", keepalive => 0) for 0 .. 1;
ok(wait_held('default', 2), '1: two requests held');
my ($oldw, $neww) = reload_nginx();
is(scalar @$oldw, 1, '1: one old worker');
ok(pid_alive($oldw->[0]), '1: the old worker stays after the reload, holding its 2');
is(scope_status('default')->{held}, 2, '1: held=2 after the reload');
ok(kill('KILL', $oldw->[0]), "1: kill -9 the old worker $oldw->[0]");
ok(wait_for(sub { !pid_alive($oldw->[0]) }, 5), '1: the old worker is gone');
ok($old[$_]->closed(5), "1: its held request $_: connection closed") for 0 .. 1;
ok(wait_held('default', 0), '1: status: held=0');
is(scalar(worker_pids()), 1, '1: one worker (the new generation\'s)');

is(scalar ctl('POST', 'resume'), 200, '1: resumed');
is(scalar ctl('POST', 'pause'), 200, '1: paused again');
my @c = map { http_connect($port) } 1 .. 3;
$c[0]->send_request(path => '/new/0', keepalive => 0);
ok(wait_held('default', 1), '1: a new request is held: held=1');
my ($r0) = read_responses(0.3, $c[0]);
ok(!$r0, '1: ... not answered (the dead worker\'s 2 do not count against max_held)')
    or diag("answered $r0->[0]");
$c[1]->send_request(path => '/new/1', keepalive => 0);
ok(wait_held('default', 2), '1: a second one is held: held=2');
$c[2]->send_request(path => '/new/2', keepalive => 0);
my ($r2) = read_responses(5, $c[2]);
is($r2 && $r2->[0], 503, '1: a third one gets 503 (max_held 2 still works)');
my (undef, undef, $j) = ctl('POST', 'resume');
my @r = read_responses(5, @c[0, 1]);
is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, '1: the resume answers both held requests 200');
$_->close for @c;
stop_nginx();

# ---------------------------------------------------------------- 2. drain waiters
my $CONF2 = <<'CONF';
worker_processes 1;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location /slow/ {
            intermission slow;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            proxy_read_timeout 60s;
        }
    }
    %%CONTROL_SERVER%%
}
CONF
start_nginx($CONF2);
my ($w) = worker_pids();
my $efd = module_eventfd($w);
ok(defined $efd, "2: the worker has the module's eventfd (fd " . ($efd // 'none') . ")");
like(fdinfo($w, $efd // -1) // '', qr/^eventfd-count:\s*[0-9a-f]+\s*$/m, '2: eventfd-count is readable (hex)');
{
    my $c0 = eventfd_count($w, $efd // -1) // 0;
    for (1 .. 6) { ctl('POST', 'pause', 'scope=slow'); ctl('POST', 'resume', 'scope=slow') }
    my $c1 = eventfd_count($w, $efd // -1) // 0;
    note("eventfd-count: $c0 -> $c1 after 6 pauses and resumes");
    ok($c1 - $c0 >= 6 && $c1 - $c0 <= 24, '2: 6 pauses and resumes make the count grow by a few (read as hex)')
        or diag("eventfd-count: $c0 -> $c1");
}

my $slowc = http_connect($port);
$slowc->send_request(path => '/slow/long?sleep=15000', keepalive => 0);
ok(wait_inflight('slow', 1), '2: a slow request in flight in "slow"');
my $d = ctl_send('GET', 'drain', 'scope=slow&timeout=30s');
ok(none_readable(0.5, $d), '2: the drain of "slow" waits');
ok(kill('KILL', $w), "2: kill -9 the worker $w");
ok($d->closed(5), '2: the drain\'s connection is closed with the worker');
ok($slowc->closed(5), '2: the slow request\'s connection is closed with the worker');
my @w1;
ok(wait_for(sub { @w1 = grep { $_ != $w } worker_pids(); @w1 == 1 }, 10), '2: the master started a new worker');
my $nw = $w1[0];
ok(wait_inflight('slow', 0), '2: status: inflight=0 for "slow" (the dead worker\'s count is gone)');

my $nefd = module_eventfd($nw // 0);
ok(defined $nefd, '2: the new worker has the module\'s eventfd');
sleep 0.3;    # let the new worker settle (ticks, rechecks)
my $n0 = eventfd_count($nw, $nefd // -1);
my $ok = 0;
for my $i (1 .. 100) {
    my ($st) = http_get($port, "/slow/quick$i");
    $ok++ if ($st // 0) == 200;
}
is($ok, 100, '2: 100 requests through "slow", one after another, answered 200');
my $n1 = eventfd_count($nw, $nefd // -1);
my $grew = (defined $n0 && defined $n1) ? $n1 - $n0 : undef;
note('eventfd-count: ' . ($n0 // 'undef') . ' -> ' . ($n1 // 'undef'));
ok(defined $grew && $grew <= 2,
   '2: the eventfd is not written for requests that end with nobody waiting (grew by at most 2)')
    or diag('eventfd-count grew by ' . ($grew // 'undef') . ' over 100 requests');

my ($st, undef, $dj) = ctl('GET', 'drain', 'scope=slow&timeout=2s');
is($st, 200, '2: a drain of "slow" answers 200 at once');

my @sig = error_log_lines(qr/exited on signal 9/);
is(scalar @sig, 2, 'error log: two "exited on signal 9" lines (the two kills)') or diag(join "\n", @sig);
finish();
