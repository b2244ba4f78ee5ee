#!/usr/bin/perl
# connection_budget.t: a maintenance on Debian's defaults (worker_processes 2,
# worker_connections 768, intermission's defaults): 120 new requests a second for 10.7 s
# while paused (1,284 held, on 1,284 client connections), then the resume. Every request
# is answered 200 and reaches the backend once: no 503 of the default cap, no client
# connection refused or reset ("768 worker_connections are not enough"), no 500 of a
# released request that found no connection for its upstream. Seen with the module of
# 2026-12-01 (the issue's figures): 392 x 503, 743 client connection errors, 14 x 500.
# The held requests per worker are noted: how the kernel spread the connections.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $RATE = 120;
my $SECONDS = 10.7;

start_nginx(<<'CONF');
worker_processes 2;
events { worker_connections 768; }
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_set_header X-Seq $http_x_seq;
            proxy_set_header X-Worker $pid;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
is(scalar ctl('POST', 'pause'), 200, 'paused');
my $n = int($RATE * $SECONDS);
my (@c, %err);
my $t0 = time;
for my $i (1 .. $n) {
    my $at = $t0 + ($i - 1) / $RATE;
    sleep($at - time) if $at > time;
    my $c = eval { http_connect($port) };
    if (!$c) { $err{connect}++; next }
    $c->send_request(path => "/m/$i", headers => ['X-Seq' => $i], keepalive => 0);
    push @c, $c;
}
note(sprintf '%d connections in %.1f s', scalar @c, time - $t0);
is(scalar keys %err, 0, 'every client connected') or diag(join ', ', map { "$_ $err{$_}" } keys %err);
ok(wait_held('default', $n, 10), "$n held") or diag('held ' . ((scope_status('default') || {})->{held} // '?'));
is(scalar ctl('POST', 'resume'), 200, 'resumed');
my @r = read_responses(120, @c);
my %st;
$st{ $_ ? $_->[0] : 'none' }++ for @r;
is($st{200} // 0, $n, "all $n answered 200") or diag(join ', ', map { "$_ x $st{$_}" } sort keys %st);
$_->close for @c;
my (%seen, %worker);
for (grep { $_->{uri} =~ m{^/m/} } backend_log()) { $seen{ $_->{uri} }++; $worker{ $_->{worker} }++ }
is(scalar(grep { $_ == 1 } values %seen), $n, 'each reached the backend once');
note('held (and released) per worker: ' . join ', ', map { "$_: $worker{$_}" } sort keys %worker);
is(scalar(error_log_lines(qr/worker_connections are not enough/)), 0, 'no "worker_connections are not enough"');

finish();
