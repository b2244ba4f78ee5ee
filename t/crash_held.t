#!/usr/bin/perl
# crash_held.t: a worker killed with SIGKILL while it holds requests. worker_processes 2,
# reuseport. Keep-alive client connections are pinned to a worker: each first asks
# /who (intermission off, answers the worker's $pid), so the test knows which worker holds
# what. Scope "default" is paused; 3 requests are held in each worker; scope "slow" is not
# paused and has one slow request in flight in each worker (the backend sleeps 8 s).
# `kill -9` worker A:
# - A's held clients and A's slow client see their connections closed (expected);
# - B's held requests are unaffected (still held, nothing answered, nothing at the backend);
# - after the respawn, status shows held=3 (B's; A's gauges are gone with A) and
#   inflight=1 for "slow" (B's), 0 for "default";
# - drain of "default" answers 200 at once; drain of "slow" answers 503 (inflight 1) with a
#   short timeout, then 200 once B's slow request ends;
# - resume releases B's 3 (released=3): answered 200, each reaching the backend once,
#   through B; A's held requests never reach the backend;
# - the new worker holds and releases as usual.
# The master's "exited on signal 9" alert is expected (allow_alerts), exactly once.
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
            proxy_set_header X-Seq $http_x_seq;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /slow/ {
            intermission slow;
            proxy_set_header X-Worker $pid;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            proxy_read_timeout 60s;
        }
        location = /who {
            intermission off;
            return 200 "$pid";
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my @w0 = worker_pids();
is(scalar @w0, 2, 'two workers');

# 4 keep-alive connections pinned to each worker: 3 for held requests, 1 for a slow one
my %pinned = map { $_ => [] } @w0;
my @spare;
for (1 .. 200) {
    last unless grep { @{ $pinned{$_} } < 4 } @w0;
    my $c = http_connect($port);
    my ($st, undef, $body) = $c->request(method => 'GET', path => '/who', keepalive => 1);
    last unless $st && $st == 200;
    if ($pinned{$body} && @{ $pinned{$body} } < 4) { push @{ $pinned{$body} }, $c } else { push @spare, $c }
}
$_->close for @spare;
ok(!grep({ @{ $pinned{$_} } < 4 } @w0), 'four connections pinned to each worker')
    or diag(join ', ', map { "$_: " . scalar @{ $pinned{$_} } } @w0);
my ($A, $B) = @w0;

is(scalar ctl('POST', 'enable', 'scope=default'), 200, 'default paused');
my %held;
for my $w ($A, $B) {
    my @c = @{ $pinned{$w} }[0 .. 2];
    $c[$_]->send_request(path => "/held/$w/$_", headers => ['X-Seq' => "held-$w-$_"], keepalive => 0) for 0 .. 2;
    $held{$w} = \@c;
}
ok(wait_held('default', 6), 'six held, three in each worker');

my %slow;
for my $w ($A, $B) {
    $slow{$w} = $pinned{$w}[3];
    $slow{$w}->send_request(path => "/slow/$w?sleep=8000", keepalive => 0);
}
ok(wait_inflight('slow', 2), 'one slow request in flight in each worker');
my $s0 = scope_status('default');
my %c0 = %{ $s0->{counters} || {} };

ok(kill('KILL', $A), "kill -9 worker $A");
my $t_kill = time;
for my $i (0 .. 2) {
    ok($held{$A}[$i]->closed(5), "killed worker's held request $i: connection closed");
}
ok($slow{$A}->closed(5), "killed worker's slow request: connection closed");
ok(none_readable(0.3, @{ $held{$B} }, $slow{$B}), "the other worker's held and slow requests are unaffected");

my @w1;
ok(wait_for(sub { @w1 = worker_pids(); @w1 == 2 && !grep { $_ == $A } @w1 }, 10), 'the master started a new worker');
my ($N) = grep { $_ != $B } @w1;

my $s;
ok(wait_for(sub { $s = scope_status('default'); $s && $s->{held} == 3 }), 'status: held=3 (the surviving worker\'s)')
    or diag explain $s;
is($s && $s->{paused}, 1, 'default still paused');
is($s && $s->{inflight}, 0, 'default: inflight=0');
ok(wait_inflight('slow', 1), 'slow: inflight=1 (the surviving worker\'s slow request)');
my $c1 = $s->{counters};
note('counters after the kill: ' . JSON::PP->new->canonical->encode($c1));
is($c1->{held} - $c0{held}, 0, 'counters.held unchanged by the kill');
is($c1->{released} - $c0{released}, 0, 'counters.released unchanged by the kill');

{
    my $t0 = time;
    my ($st, undef, $j) = ctl('GET', 'drain', 'scope=default&timeout=10s');
    is($st, 200, 'drain of default answers 200');
    ok(time - $t0 < 2 * slow(), '... at once (not waiting for the dead worker\'s counts)');
    ($st, undef, $j) = ctl('GET', 'drain', 'scope=slow&timeout=300ms');
    is($st, 503, 'drain of slow with a short timeout: 503');
    is($j && $j->{inflight}, 1, '... with inflight=1');
}
{
    my $d = ctl_send('GET', 'drain', 'scope=slow&timeout=30s');
    my @r = read_responses(20, $slow{$B}, $d);
    is($r[0] && $r[0][0], 200, "the surviving worker's slow request answered 200");
    is($r[1] && $r[1][0], 200, 'drain of slow answers 200 once it ended');
    ok($r[0] && $r[1] && $r[1][3] >= $r[0][3] - 0.05, '... after the slow request ended');
    $d->close;
}
ok(none_readable(0.1, @{ $held{$B} }), 'the held requests are still held');

my (undef, undef, $j) = ctl('POST', 'disable', 'scope=default');
is($j && $j->{scopes}[0]{released}, 3, 'resume released=3');
my @r = read_responses(10, @{ $held{$B} });
is(scalar(grep { $_ && $_->[0] == 200 } @r), 3, "the surviving worker's 3 answered 200");

sleep 0.3;
my @log = grep { ($_->{seq} // '') =~ /^held-/ } backend_log();
my %n;
$n{ $_->{seq} }++ for @log;
is_deeply([sort keys %n], [map { "held-$B-$_" } 0 .. 2], "the backend received the surviving worker's 3, none of the killed worker's");
is(scalar(grep { $_ != 1 } values %n), 0, 'each exactly once');
is(scalar(grep { ($_->{worker} // 0) == $B } @log), 3, "forwarded by worker $B");

$s = scope_status('default');
is($s && $s->{held}, 0, 'held=0 after the resume');
is($s && $s->{counters}{released} - $c0{released}, 3, 'counters.released +3');
my $lost = ($s->{counters}{held} - $s->{counters}{released} - $s->{counters}{aborted}
            - $s->{counters}{timed_out} - $s->{held});
note("held requests that ended with the killed worker, in no counter: $lost");

# the new worker works
{
    $_->close for @{ $held{$A} }, @{ $held{$B} }, $slow{$A}, $slow{$B};
    is(scalar ctl('POST', 'enable', 'scope=default'), 200, 'paused again');
    my @c;
    my %by;
    for (1 .. 100) {
        last if ($by{$N} // 0) >= 1 && ($by{$B} // 0) >= 1;
        my $c = http_connect($port);
        my ($st, undef, $body) = $c->request(method => 'GET', path => '/who', keepalive => 1);
        if (($by{$body} // 0) >= 1) { $c->close; next }
        $by{$body}++;
        $c->send_request(path => "/again/$body", headers => ['X-Seq' => "again-$body"], keepalive => 0);
        push @c, $c;
    }
    is(scalar @c, 2, 'one request held in each worker (the new one included)');
    ok(wait_held('default', 2), 'held=2');
    (undef, undef, $j) = ctl('POST', 'disable');
    is($j && $j->{scopes}[0]{released}, 2, 'resume released=2');
    @r = read_responses(5, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'both answered 200');
    $_->close for @c;
}

my @sig = error_log_lines(qr/exited on signal 9/);
is(scalar @sig, 1, 'error log: exactly one "exited on signal 9" line') or diag(join "\n", @sig);
finish();
