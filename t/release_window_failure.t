#!/usr/bin/perl
# release_window_failure.t: the release window and the hold on a failure
# (`intermission_on_failure hold`) together. 2 workers, window 2. The backend is stopped;
# 12 requests (X-Seq 1..12, 300 ms each at the backend, sent 50 ms apart) are held because
# of the failure, the scope goes down. The backend comes back on its port: all 12 are
# answered 200, each reached the backend once, the backend never had more than 2 of them
# at once (and did have 2), the oldest went first (the trial sends it) and the rest nearly
# in arrival order over the workers; the scope is up again, held 0.
# Without the window (a release of a scope coming back up that is not windowed), the
# backend would have had the 11 after the trial at once. Seen with the module of f541c54:
# the readiness check sent the oldest request of whichever worker took it first (3 or 7
# first at the backend in 6 of 12 runs), not the oldest over the workers.
# (2) The worker that holds the oldest request is stopped (SIGSTOP): the other worker's
# readiness check goes anyway (after a grace of 100 ms), its request is answered 200 once
# the backend is back, and the stopped worker's once it runs again.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_backend(name => 'FB');
start_backend(name => 'FS');
start_nginx(<<'CONF');
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        location /fw/ {
            intermission fw;
            intermission_on_failure hold;
            intermission_release_window 2;
            proxy_set_header X-Seq $http_x_seq;
            proxy_pass http://127.0.0.1:%%FB_PORT%%;
        }
        location /fs/ {
            intermission fs;
            intermission_on_failure hold;
            proxy_pass http://127.0.0.1:%%FS_PORT%%;
        }
        location = /who { intermission off; return 200 "$pid"; }
    }
    %%CONTROL_SERVER%%
}
CONF
my $port = port('PORT');
my $N = 12;
my $MS = 300;

my $bport = backend_port('FB');
stop_backend('FB');
my @c;
for my $i (1 .. $N) {
    my $c = http_connect($port);
    $c->send_request(path => "/fw/$i?sleep=$MS", headers => ['X-Seq' => $i], keepalive => 0);
    push @c, $c;
    sleep 0.05;
}
ok(wait_down('fw', 5), 'the scope is down');
ok(wait_held('fw', $N), "$N held because of the failure");

start_backend(name => 'FB', port => $bport, keep_log => 1);
my @r = read_responses(30, @c);
is(scalar(grep { $_ && $_->[0] == 200 } @r), $N, "all $N answered 200 once the backend is back")
    or diag(join ' ', map { $_ ? $_->[0] : 'none' } @r);
$_->close for @c;

my @e = grep { $_->{uri} =~ m{^/fw/} } backend_log('FB');
is(scalar @e, $N, "each reached the backend once ($N entries)");
my %uniq = map { $_->{seq} => 1 } @e;
is(scalar keys %uniq, $N, 'no request twice');
my $most = most_at_once(@e);
cmp_ok($most, '<=', 2, "the backend never had more than the window (2) at once (most: $most)");
is($most, 2, 'and it did have 2 at once: the window, not one at a time');
is($e[0]{seq}, 1, 'the oldest went first') or diag(join ' ', map { $_->{seq} } @e);
my $in_order = lis(map { $_->{seq} } @e);
cmp_ok($in_order, '>=', $N - 2, "nearly in arrival order over the workers (LIS $in_order of $N)")
    or diag(join ' ', map { $_->{seq} } @e);
ok(wait_down('fw', 5, 0), 'the scope is up again');
ok(wait_held('fw', 0), 'nothing held');

# ---- (2) the worker with the oldest request is stopped
{
    my %pinned = %{ pinned_connections($port, 1) };
    my ($b, $a) = sort keys %pinned;
    ok($a && $b, '(2) a connection pinned to each of the two workers');
    my $fport = backend_port('FS');
    stop_backend('FS');
    $pinned{$b}[0]->send_request(path => '/fs/b', keepalive => 0);
    ok(wait_held('fs', 1), "(2) the oldest held by worker $b");
    ok(wait_down('fs', 5), '(2) the scope is down');
    $pinned{$a}[0]->send_request(path => '/fs/a', keepalive => 0);
    ok(wait_held('fs', 2), "(2) the next held by worker $a");
    ok(kill('STOP', $b), "(2) worker $b stopped");
    start_backend(name => 'FS', port => $fport, keep_log => 1);
    my ($ra) = read_responses(4, $pinned{$a}[0]);
    is($ra && $ra->[0], 200, "(2) worker ${a}'s request answered 200 while $b is stopped");
    kill 'CONT', $b;
    my ($rb) = read_responses(5, $pinned{$b}[0]);
    is($rb && $rb->[0], 200, "(2) then worker ${b}'s");
    $_->close for map { @$_ } values %pinned;
    my @fs = grep { $_->{uri} =~ m{^/fs/} } backend_log('FS');
    is(join(' ', map { $_->{uri} } @fs), '/fs/a /fs/b', '(2) each reached the backend once, a first');
}

finish();
