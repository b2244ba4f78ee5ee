#!/usr/bin/perl
# worker_crash.t: in-flight counts are per worker, and a worker killed with SIGKILL takes
# its counts with it. worker_processes 2 (reuseport): a slow request (backend sleeps 30 s)
# is in flight in worker W (found through X-Worker: $pid at the backend); status shows
# inflight=1 from both workers. A drain waiter sits on a control connection of the OTHER
# worker (a keep-alive connection whose status answer carried that worker's pid in
# X-Worker). `kill -9 W`: the slow request's client connection is closed, the drain
# waiter is answered 200 (drained, inflight 0) within 5 s, the master starts a new
# worker, status shows inflight=0, a new drain answers at once, and new requests (also
# slow ones, counted again) work. The error log must contain the master's
# "exited on signal 9" alert exactly once and no other alert.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

allow_alerts(qr/exited on signal 9/);

start_nginx(<<'CONF');
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        location / {
            intermission on;
            proxy_set_header X-Worker $pid;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            proxy_read_timeout 60s;
        }
    }
    server {
        listen 127.0.0.1:%%CTL_PORT%% reuseport;
        location /ctl/ {
            intermission_control;
            add_header X-Worker $pid always;
        }
    }
}
CONF

my $port = port('PORT');
my @w0 = worker_pids();
is(scalar @w0, 2, 'two workers');

my $slow = http_connect($port);
$slow->send_request(path => '/slow?sleep=30000', keepalive => 0);
my $log;
ok(wait_for(sub { ($log) = grep { $_->{uri} eq '/slow?sleep=30000' } backend_log(); $log }),
   'slow request reached the backend');
my $W = $log && $log->{worker};
ok($W && grep({ $_ == $W } @w0), "slow request is in worker $W") or diag('X-Worker: ' . ($W // 'none'));
ok(wait_inflight('default', 1), 'status: inflight=1');

# keep-alive control connections pinned to each worker
my (%conn, @spare);
for (1 .. 60) {
    last if $conn{same} && $conn{other};
    my $c = http_connect(port('CTL_PORT'));
    my ($st, $h, $b) = $c->request(method => 'GET', path => '/ctl/status', keepalive => 1);
    my $cw = $h && $h->{'x-worker'};
    last unless $st && $st == 200 && defined $cw;
    my $k = ($W && $cw == $W) ? 'same' : 'other';
    if ($conn{$k}) { push @spare, $c; next }
    $conn{$k} = $c;
    my $j = eval { JSON::PP->new->decode($b) };
    my ($d) = grep { $_->{name} eq 'default' } @{ ($j && $j->{scopes}) || [] };
    is($d && $d->{inflight}, 1, "status from the $k worker: inflight=1");
}
$_->close for @spare;
ok($conn{other}, 'a control connection on the other worker') or diag('X-Worker missing or no spread');

my $waiter = $conn{other} ? ctl_send('GET', 'drain', 'timeout=20s', conn => $conn{other}) : undef;
ok($waiter && !$waiter->readable(0.3), 'drain waits while the request is in flight');

my $t_kill = time;
ok($W && kill('KILL', $W), "kill -9 $W");

ok($slow->closed(5), "the slow request's client connection is closed");

SKIP: {
    skip 'no control connection on the other worker', 4 unless $waiter;
    my ($st, undef, $j, $raw, $t) = ctl_recv($waiter, 10);
    is($st, 200, 'drain waiter answered 200 after the kill') or diag($raw // 'no answer');
    ok($j && $j->{drained}, 'drained=true');
    is($j && $j->{inflight}, 0, 'inflight=0');
    ok(defined $t && $t - $t_kill <= 5, 'answered within 5 s of the kill')
        or diag('after ' . (defined $t ? $t - $t_kill : 'never') . ' s');
}

my @w1;
ok(wait_for(sub { @w1 = worker_pids(); @w1 == 2 && !grep { $_ == $W } @w1 }, 10), 'the master started a new worker');
ok(wait_inflight('default', 0), 'status: inflight=0 after the respawn');
my $s = scope_status('default');
is($s && $s->{inflight}, 0, 'inflight=0');
is($s && $s->{held}, 0, 'held=0');

{
    my $t0 = time;
    my ($st, undef, $j) = ctl('GET', 'drain', 'timeout=5s');
    is($st, 200, 'a new drain answers 200');
    ok(time - $t0 < 2, '... at once');
}

{
    my ($st) = http_get($port, '/after');
    is($st, 200, 'new requests answered');
    my $c = http_connect($port);
    $c->send_request(path => '/after-slow?sleep=1000', keepalive => 0);
    ok(wait_for(sub { grep { $_->{uri} eq '/after-slow?sleep=1000' } backend_log() }), 'new slow request in flight');
    ok(wait_inflight('default', 1), 'counted again: inflight=1');
    my $d = ctl_send('GET', 'drain');
    my @r = read_responses(5, $c, $d);
    is($r[0] && $r[0][0], 200, 'slow request answered');
    is($r[1] && $r[1][0], 200, 'drain answered after it');
    $_->close for $c, $d;
}

$_->close for grep { $_ } values %conn;
$slow->close;

my @sig = error_log_lines(qr/exited on signal 9/);
is(scalar @sig, 1, 'error log: exactly one "exited on signal 9" line') or diag(join "\n", @sig);
finish();
