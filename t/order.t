#!/usr/bin/perl
# order.t: with one worker, requests held while paused are released in arrival order:
# 20 connections each send one request (X-Seq=i) 20 ms apart; after resume the backend
# sees them in send order. Also three requests pipelined on one connection while paused
# are all answered, in order, after resume and reach the backend in order.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use Intermission::Test;

start_nginx(<<'CONF');
worker_processes 1;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        keepalive_timeout 60s;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $N = 20;

is(scalar ctl('POST', 'enable'), 200, 'paused');

my @c;
for my $i (1 .. $N) {
    my $c = http_connect($port);
    $c->send_request(path => "/order/$i", headers => ['X-Seq' => $i], keepalive => 0);
    push @c, $c;
    sleep 0.02;
}
ok(wait_held('default', $N), "held=$N");
ok(none_readable(0.1, @c), 'nothing answered while paused');
is(scalar(grep { $_->{uri} =~ m{^/order/} } backend_log()), 0, 'backend saw nothing');

my (undef, undef, $j) = ctl('POST', 'disable');
is($j && $j->{scopes}[0]{released}, $N, "released=$N");

my @r = read_responses(5, @c);
is(scalar(grep { $_ && $_->[0] == 200 } @r), $N, "all $N answered 200");
my @seq = map { $_->{seq} } grep { $_->{uri} =~ m{^/order/} } backend_log();
is_deeply(\@seq, [1 .. $N], 'backend arrival order equals send order')
    or diag("arrival order: @seq");
$_->close for @c;

# pipelining: three requests written at once on one connection while paused
is(scalar ctl('POST', 'enable'), 200, 'paused again');
my $p = http_connect($port);
$p->pipeline(map { { path => "/pipe/$_", headers => ['X-Seq' => "p$_"] } } 1 .. 3);
ok($p->flush(5), 'pipelined requests written');
ok(wait_held('default', 1), 'first pipelined request held');
ok(!$p->readable(0.3), 'pipelined requests not answered while paused');
is(scalar(grep { $_->{uri} =~ m{^/pipe/} } backend_log()), 0, 'backend saw no pipelined request');

is(scalar ctl('POST', 'disable'), 200, 'resumed');
my @bodies;
for my $i (1 .. 3) {
    my ($st, undef, $b) = $p->read_response(5);
    is($st, 200, "pipelined response $i: 200");
    push @bodies, $b;
}
is_deeply(\@bodies, ['ok /pipe/1', 'ok /pipe/2', 'ok /pipe/3'], 'pipelined responses in order');
is_deeply([map { $_->{seq} } grep { $_->{uri} =~ m{^/pipe/} } backend_log()], [qw(p1 p2 p3)],
          'pipelined requests reached the backend in order');
$p->close;

finish();
