#!/usr/bin/perl
# cache_helpers.t: the cache manager and the cache loader are not workers. nginx runs
# every module's init_process in them too; the module must not act as a worker there.
# worker_processes 2, proxy_cache_path (so the master starts both helpers), a cached
# location with `intermission on`.
# - The module's eventfd (made by the master before it forks) is in the epoll set of each
#   worker (the check that the lookup can find it), and not in the epoll set of the cache
#   loader (looked at first: it exits about 60 s after the start) nor of the cache manager.
# - The cache manager killed with SIGKILL is respawned; a pause, 2 held requests and a
#   resume then work (both answered, held=0), and the new cache manager does not watch the
#   eventfd either.
# - pause?auto_resume=1s, three times: the "auto-resumed" notice line comes from a worker,
#   never from the cache manager (or loader).
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

allow_alerts(qr/cache manager process \d+ exited on signal 9/);

start_nginx(<<'CONF');
worker_processes 2;
http {
    proxy_cache_path %%PREFIX%%/cache keys_zone=c:1m;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_cache c;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF
my $port = port('PORT');

my @w = worker_pids();
is(scalar @w, 2, 'two workers');
# The master forks the cache manager and loader after the workers.
wait_for(sub { nginx_children(qr/cache loader process/) && nginx_children(qr/cache manager process/) });
my ($loader) = nginx_children(qr/cache loader process/);
my ($manager) = nginx_children(qr/cache manager process/);
ok($loader, 'a cache loader runs (pid ' . ($loader // 'none') . ')');
ok($manager, 'a cache manager runs (pid ' . ($manager // 'none') . ')');
my @m = fds_of(nginx_pid(), 'anon_inode:[eventfd]');
is(scalar @m, 1, 'the master has one eventfd (the module\'s)');

SKIP: {
    skip 'no cache loader', 1 unless $loader;
    my ($on, $why) = watches_eventfd($loader);
    ok(!$on, "the cache loader does not watch the module's eventfd ($why)");
}
for my $pid (@w) {
    my ($on, $why) = watches_eventfd($pid);
    ok($on, "worker $pid watches the module's eventfd ($why)");
}
SKIP: {
    skip 'no cache manager', 1 unless $manager;
    my ($on, $why) = watches_eventfd($manager);
    ok(!$on, "the cache manager does not watch the module's eventfd ($why)");
}

my ($st) = http_get($port, '/warm');
is($st, 200, 'not paused: a request passes');

# ---------------------------------------------------------------- the cache manager respawned
SKIP: {
    skip 'no cache manager', 8 unless $manager;
    ok(kill('KILL', $manager), "kill -9 the cache manager $manager");
    my $new;
    ok(wait_for(sub { ($new) = grep { $_ != $manager } nginx_children(qr/cache manager process/); $new }, 10),
       'the master respawned the cache manager (pid ' . ($new // 'none') . ')');
    ok(wait_for(sub { !pid_alive($manager) }, 5), 'the old cache manager is gone');
    is(scalar ctl('POST', 'pause'), 200, 'paused');
    my @c = map { http_connect($port) } 1 .. 2;
    $c[$_]->send_request(path => "/held/$_", keepalive => 0) for 0 .. 1;
    ok(wait_held('default', 2), 'two requests held');
    is(scalar ctl('POST', 'resume'), 200, 'resumed');
    my @r = read_responses(5, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'both held requests answered 200');
    ok(wait_held('default', 0), 'status: held=0');
    $_->close for @c;
    $manager = $new;
    if ($new) {
        my ($on, $why) = watches_eventfd($new);
        ok(!$on, "the new cache manager does not watch the module's eventfd ($why)");
    } else {
        fail('the new cache manager does not watch the module\'s eventfd (no new cache manager)');
    }
}

# ---------------------------------------------------------------- auto-resume in a worker
for my $round (1 .. 3) {
    my $before = scalar error_log_lines(qr/auto-resumed/);
    my ($pst) = ctl('POST', 'pause', 'auto_resume=1s');
    is($pst, 200, "round $round: paused with auto_resume=1s");
    sleep 2.5;
    my @lines = error_log_lines(qr/auto-resumed/);
    my @new = @lines[$before .. $#lines];
    my %workers = map { $_ => 1 } worker_pids();
    my @pids = map { /\]\s+(\d+)#\d+:/ ? $1 : () } @new;
    is(scalar @pids, 1, "round $round: one \"auto-resumed\" line") or diag(join "\n", @new);
    my @helpers = grep { !$workers{$_} } @pids;
    ok(@pids && !@helpers, "round $round: it comes from a worker, not from the cache manager or loader")
        or diag('auto-resumed by pid(s) ' . join(', ', @pids) . '; workers: ' . join(', ', sort keys %workers)
                . '; cache manager: ' . ($manager // 'none') . '; loader: ' . ($loader // 'none'));
    my $s = scope_status('default');
    ok($s && !$s->{paused}, "round $round: the scope is resumed");
}

finish();
