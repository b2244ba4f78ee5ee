#!/usr/bin/perl
# workers.t: with 4 workers (listen ... reuseport spreads connections over them), 40
# requests held while paused are counted in status across workers (held summed = 40),
# and a single resume sent on a separate control connection releases the held requests
# of every worker: all 40 are answered and recorded by the backend, through at least two
# distinct worker pids ($pid passed as X-Worker).
use strict;
use warnings;
use Test::More;
use Intermission::Test;

my $N = 40;

start_nginx(<<'CONF');
worker_processes 4;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        location / {
            intermission on;
            proxy_set_header X-Worker $pid;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    server {
        listen 127.0.0.1:%%CTL_PORT%% reuseport;
        location /ctl/ {
            intermission_control;
        }
    }
}
CONF

my $port = port('PORT');
my @workers = worker_pids();
is(scalar @workers, 4, 'four workers running');

is(scalar ctl('POST', 'enable'), 200, 'paused');

# the pause is visible from every worker the control connections land on
my @paused = map { my $s = scope_status('default'); $s ? $s->{paused} : 'undef' } 1 .. 8;
is_deeply(\@paused, [(1) x 8], 'status reports paused on every control connection');

my @c = map { http_connect($port) } 1 .. $N;
$c[$_]->send_request(path => "/w/$_", headers => ['X-Seq' => $_], keepalive => 0) for 0 .. $N - 1;

ok(wait_held(undef, $N), "held summed over scopes = $N");
ok(none_readable(0.2, @c), 'nothing answered while paused');
is(scalar(backend_log()), 0, 'backend saw nothing while paused');

my (undef, undef, $j) = ctl('POST', 'disable');
my $rel = 0;
$rel += $_->{released} // 0 for @{ ($j && $j->{scopes}) || [] };
is($rel, $N, "resume released=$N");

my @r = read_responses(5, @c);
is(scalar(grep { $_ && $_->[0] == 200 } @r), $N, "all $N answered 200");
my @log = grep { $_->{uri} =~ m{^/w/} } backend_log();
is(scalar @log, $N, "backend recorded all $N");
my %seen;
$seen{ $_->{seq} }++ for @log;
is(scalar(keys %seen), $N, 'each request reached the backend exactly once');
my %w;
$w{ $_->{worker} // 'none' }++ for @log;
cmp_ok(scalar(keys %w), '>=', 2, 'requests went through at least 2 workers')
    or diag explain \%w;
my %known = map { $_ => 1 } @workers;
is(scalar(grep { !$known{$_} } keys %w), 0, 'X-Worker values are the worker pids');

is(total_held(), 0, 'held=0 after resume');
$_->close for @c;
finish();
