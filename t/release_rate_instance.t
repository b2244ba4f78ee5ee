#!/usr/bin/perl
# release_rate_instance.t: intermission_release_rate is the rate (and burst) of the whole
# nginx instance: one token bucket over all workers, old and new ones of a reload, and the
# tokens go to the oldest held requests first, over all workers (global arrival order).
# The rate does not depend on how the held requests are spread over the workers.
# - HTTP/2, worker_processes 4, 4r/s (burst 1): 8 concurrent streams of one nghttp
#   connection (so all in one worker) held, then resumed: the first reaches the backend
#   within 0.5 s of the resume, the last within 3.0 s (ideal 1.75 s; a per-worker share of
#   the rate, 1 r/s, takes ~7 s), all 8 answered 200.
# - Reload: worker_processes 1, 10r/s: 10 held in the old worker (X-Seq 1..10), reload, 10
#   more held in the new worker (X-Seq 11..20), resume: all 20 answered 200, the span of
#   their arrivals at the backend is >= 1.5 s (ideal 1.9 s; two workers each pacing at
#   10 r/s take ~0.9 s), and the backend's arrival order is 1..20 exactly.
# - Two workers, reuseport, 10r/s, no reload: 20 held on keep-alive connections pinned to
#   the workers (odd X-Seq in one, even in the other, held in order 1..20); the resume is
#   sent on a control connection pinned to the worker that holds the even ones: the span
#   of the 20 arrivals is >= 1.5 s and the order is 1..20 exactly.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $NGHTTP = '/usr/bin/nghttp';

# the backend's log entries whose URI starts with $prefix, in arrival order
sub arrivals { my ($prefix) = @_; grep { index($_->{uri}, $prefix) == 0 } backend_log() }

sub span { my (@l) = @_; @l ? $l[-1]{time} - $l[0]{time} : 0 }

sub fmt { sprintf '%.2f', $_[0] }

# old_workers_closed(\@new_workers) -> true once every worker but the new ones is shutting
# down: reload_nginx returns as soon as the new workers run, but the master tells the old
# ones to stop about 100 ms later, and until then they still accept connections.
sub old_workers_closed {
    my ($new) = @_;
    my %n = map { $_ => 1 } @$new;
    return wait_for(sub { !grep { !$n{$_} } worker_pids() });
}

# pin($port, { $pid => $n, ... }) -> { $pid => [connections] }: keep-alive connections that
# asked /who and landed on worker $pid (reuseport spreads them), $n of them per worker
sub pin {
    my ($p, $want) = @_;
    my %pinned = map { $_ => [] } keys %$want;
    my @spare;
    for (1 .. 400) {
        last unless grep { @{ $pinned{$_} } < $want->{$_} } keys %$want;
        my $c = http_connect($p);
        my ($st, undef, $body) = $c->request(method => 'GET', path => '/who', keepalive => 1);
        if ($st && $st == 200 && $pinned{$body} && @{ $pinned{$body} } < $want->{$body}) {
            push @{ $pinned{$body} }, $c;
        } else {
            push @spare, $c;
        }
    }
    $_->close for @spare;
    return \%pinned;
}

# ---------------------------------------------------------------- HTTP/2, 4 workers
SKIP: {
    skip 'nghttp (nghttp2-client) not installed', 6 unless -x $NGHTTP;
    start_nginx(<<'CONF');
worker_processes 4;
http {
    server {
        listen 127.0.0.1:%%PORT%% http2;
        location / {
            intermission on;
            intermission_release_rate 4r/s;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF
    my $base = 'http://127.0.0.1:' . port('PORT');
    is(scalar ctl('POST', 'pause'), 200, 'h2: paused');
    my $h = bg_start($NGHTTP, '-n', '-s', map { "$base/h2/$_" } 1 .. 8);
    ok(wait_held('default', 8, 10), 'h2: 8 streams of one connection held');
    my $t0 = time;
    my (undef, undef, $j) = ctl('POST', 'resume');
    is($j && $j->{scopes}[0]{released}, 8, 'h2: the resume releases 8');
    my ($rc, $out) = bg_wait($h, 20);
    my %codes;
    $codes{$2} = $1 while ($out // '') =~ /^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d{3})\s+\S+\s+(\S+)\s*$/mg;
    is_deeply(\%codes, { map { ("/h2/$_" => 200) } 1 .. 8 }, 'h2: all 8 streams answered 200')
        or diag($out // 'nghttp still running');
    bg_kill($h) unless defined $rc;
    my @log = arrivals('/h2/');
    my $first = @log ? $log[0]{time} - $t0 : 99;
    my $last = @log ? $log[-1]{time} - $t0 : 99;
    note('h2: arrivals after the resume: ' . join(' ', map { fmt($_->{time} - $t0) } @log));
    cmp_ok($first, '<', 0.5, 'h2: the first released stream reaches the backend within 0.5 s of the resume ('
           . fmt($first) . ' s)');
    cmp_ok($last, '<', 3.0, 'h2: the last of the 8 reaches the backend within 3.0 s at 4r/s instance-wide ('
           . fmt($last) . ' s, ideal 1.75 s)');
    stop_nginx();
}

# ---------------------------------------------------------------- reload, 1 worker
{
    my $CONF = <<'CONF';
worker_processes 1;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            intermission_release_rate 10r/s;
            proxy_set_header X-Worker $pid;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF
    start_nginx($CONF);
    my $port = port('PORT');
    is(scalar ctl('POST', 'pause'), 200, 'reload: paused');
    my @c;
    for my $i (1 .. 10) {
        my $c = http_connect($port);
        $c->send_request(path => "/rl/$i", headers => ['X-Seq' => $i], keepalive => 0);
        push @c, $c;
        wait_held('default', $i);
    }
    ok(wait_held('default', 10), 'reload: 10 held in the first worker');
    my ($old, $new) = reload_nginx();
    is(scalar @$new, 1, 'reload: a new worker');
    ok(old_workers_closed($new), 'reload: the old worker no longer accepts');
    for my $i (11 .. 20) {
        my $c = http_connect($port);
        $c->send_request(path => "/rl/$i", headers => ['X-Seq' => $i], keepalive => 0);
        push @c, $c;
        wait_held('default', $i);
    }
    ok(wait_held('default', 20), 'reload: 10 more held in the new worker: held=20');
    is(scalar(arrivals('/rl/')), 0, 'reload: nothing at the backend while paused');
    my (undef, undef, $j) = ctl('POST', 'resume');
    is($j && $j->{scopes}[0]{released}, 20, 'reload: the resume releases 20');
    my @r = read_responses(20, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 20, 'reload: all 20 answered 200');
    $_->close for @c;
    my @log = arrivals('/rl/');
    note('reload: arrivals: ' . join(' ', map { ($_->{seq} // '?') . '@' . fmt($_->{time} - $log[0]{time}) } @log));
    my $sp = span(@log);
    cmp_ok($sp, '>=', 1.5, 'reload: old and new workers share one 10r/s: the 20 arrive over >= 1.5 s ('
           . fmt($sp) . ' s, ideal 1.9 s)');
    is_deeply([map { $_->{seq} } @log], [1 .. 20], 'reload: the backend receives them oldest first over both workers: 1..20');
    my %oldw = map { $_ => 1 } @$old;
    is(scalar(grep { $oldw{ $_->{worker} // 0 } && $_->{seq} <= 10 } @log), 10,
       'reload: 1..10 forwarded by the old worker');
    stop_nginx();
}

# ---------------------------------------------------------------- 2 workers, no reload
{
    start_nginx(<<'CONF');
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        location / {
            intermission on;
            intermission_release_rate 10r/s;
            proxy_set_header X-Worker $pid;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location = /who {
            intermission off;
            return 200 "$pid";
        }
    }
    server {
        listen 127.0.0.1:%%CTL_PORT%% reuseport;
        location = /who {
            return 200 "$pid";
        }
        location /ctl/ {
            intermission_control;
        }
    }
}
CONF
    my $port = port('PORT');
    my @w = worker_pids();
    is(scalar @w, 2, 'workers: two workers');
    my ($A, $B) = @w;

    my $pinned = pin($port, { $A => 10, $B => 10 });
    ok(!grep({ @{ $pinned->{$_} } < 10 } $A, $B), 'workers: ten connections pinned to each worker')
        or diag(join ', ', map { "$_: " . scalar @{ $pinned->{$_} } } $A, $B);
    my $ctlc = pin(port('CTL_PORT'), { $B => 1 })->{$B}[0];
    ok($ctlc, 'workers: a control connection pinned to the worker holding the even ones');

    is(scalar ctl('POST', 'pause'), 200, 'workers: paused');
    my @c;
    my %idx = ($A => 0, $B => 0);
    for my $i (1 .. 20) {
        my $wk = $i % 2 ? $A : $B;
        my $c = $pinned->{$wk}[ $idx{$wk}++ ] or last;
        $c->send_request(path => "/ws/$i", headers => ['X-Seq' => $i], keepalive => 0);
        push @c, $c;
        wait_held('default', $i);
    }
    ok(wait_held('default', 20), 'workers: 20 held, odd ones in one worker, even ones in the other');
    my $j;
    if ($ctlc) {
        ctl_send('POST', 'resume', undef, conn => $ctlc, keepalive => 0);
        (undef, undef, $j) = ctl_recv($ctlc, 5);
    } else {
        (undef, undef, $j) = ctl('POST', 'resume');
    }
    is($j && $j->{scopes}[0]{released}, 20, 'workers: the resume releases 20');
    my @r = read_responses(20, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 20, 'workers: all 20 answered 200');
    $_->close for @c;
    my @log = arrivals('/ws/');
    note('workers: arrivals: ' . join(' ', map { ($_->{seq} // '?') . '@' . fmt($_->{time} - $log[0]{time}) } @log));
    my $sp = span(@log);
    cmp_ok($sp, '>=', 1.5, 'workers: both workers share one 10r/s: the 20 arrive over >= 1.5 s ('
           . fmt($sp) . ' s, ideal 1.9 s)');
    is_deeply([map { $_->{seq} } @log], [1 .. 20], 'workers: the backend receives them oldest first over both workers: 1..20');
    is(scalar(grep { ($_->{worker} // 0) == ($_->{seq} % 2 ? $A : $B) } @log), 20,
       'workers: each forwarded by the worker that held it');
}

finish();
