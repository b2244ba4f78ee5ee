#!/usr/bin/perl
# abort_at_once.t: a client that sends its request and closes at once, before nginx has even
# read the request, is noticed too. Its FIN arrives with the request, so epoll reports it
# (EPOLLRDHUP) in the same event that reads the request, and never again: the held request
# must look at it when it is held. 20 such clients while paused (4 workers): soon held=0,
# aborted=20; the resume releases nothing, and the backend never sees them. A client that
# stays is held and released as usual. Found by t/chaos.t (seed 72).
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use Intermission::Test;

start_nginx(<<'CONF');
worker_processes 4;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my %base = %{ scope_status('default')->{counters} };

is(scalar ctl('POST', 'pause'), 200, 'paused');
my $stay = http_connect($port);
$stay->send_request(path => '/stay', keepalive => 0);
ok(wait_held('default', 1), 'a client that stays is held');
for my $n (1 .. 20) {
    my $c = http_connect($port);
    $c->send_request(path => "/gone/$n", keepalive => 0);
    $c->flush;
    $c->close;
}
my $s;
ok(wait_for(sub {
    $s = scope_status('default');
    $s && $s->{counters}{aborted} - $base{aborted} == 20 && $s->{held} == 1;
}, 3), 'the 20 that left at once are aborted, only the one that stays is held')
    or diag(sprintf 'held=%s aborted=%s', $s->{held}, $s->{counters}{aborted} - $base{aborted});

my (undef, undef, $j) = ctl('POST', 'resume');
is($j && $j->{scopes}[0]{released}, 1, 'the resume releases only the one that stays');
my ($r) = read_responses(5, $stay);
is($r && $r->[0], 200, 'it is answered 200');
sleep 0.3;
is(scalar(grep { $_->{uri} =~ m{^/gone/} } backend_log()), 0, 'none of those that left reached the backend');
$s = scope_status('default');
is($s->{counters}{released} - $base{released}, 1, 'counters.released=1');
is($s->{counters}{aborted} - $base{aborted}, 20, 'counters.aborted=20');

finish();
