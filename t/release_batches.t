#!/usr/bin/perl
# release_batches.t: a release larger than one batch (64 per event-loop turn) still
# releases every held request, in arrival order, from one worker; the status counts fall
# back to zero and every request reaches the backend exactly once.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use Intermission::Test;

start_nginx(<<'CONF');
worker_processes 1;
events { worker_connections 2048; }
http {
    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $N = 200;

is(scalar ctl('POST', 'pause'), 200, 'paused');
my @c;
for my $i (1 .. $N) {
    my $c = http_connect($port);
    $c->send_request(path => "/b/$i", headers => ['X-Seq' => $i], keepalive => 0);
    push @c, $c;
    sleep 0.003;
}
ok(wait_held('default', $N, 10), "held=$N");

my (undef, undef, $j) = ctl('POST', 'resume');
is($j && $j->{scopes}[0]{released}, $N, "resume answers released=$N");

my @r = read_responses(10, @c);
is(scalar(grep { $_ && $_->[0] == 200 } @r), $N, "all $N answered 200");
my @seq = map { $_->{seq} } grep { $_->{uri} =~ m{^/b/} } backend_log();
is(scalar @seq, $N, "backend saw each of the $N once");
is_deeply(\@seq, [1 .. $N], 'backend arrival order equals send order across batches')
    or diag("arrival order: @seq");

my $s = scope_status('default');
is($s->{held}, 0, 'held=0 afterwards');
is($s->{counters}{released}, $N, "counters.released=$N");
$_->close for @c;

finish();
