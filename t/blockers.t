#!/usr/bin/perl
# blockers.t: the requests a drain waits for are named as "blockers" in time, by every
# worker, and only while they last (2 workers, reuseport; each status may be answered by
# either worker, so several are asked).
# - A request that reaches a second in flight is listed within a moment, even when another
#   request of the same worker reached that age just before it (a worker looks again when
#   its next request comes of age, not only a second after its last look).
# - A listed request that ends leaves the list at once, in every worker's answer.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        intermission on;
        proxy_buffering off;
        location /slow { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
    }
    %%CONTROL_SERVER%%
}
CONF
my $port = port('PORT');

sub open_slow {
    my $c = http_connect($port);
    $c->send_request(path => '/slow?stream=0');
    my ($st) = $c->read_head;
    is($st, 200, 'an endless response starts');
    return { c => $c, since => time };
}

sub blockers { @{ (scope_status('default') // {})->{blockers} // [] } }

# Pairs of requests 300 ms apart, so that some pairs share a worker.
for my $round (1 .. 4) {
    my $a = open_slow();
    sleep 0.3;
    my $b = open_slow();
    ok(wait_for(sub { (scope_status('default') // {})->{inflight} == 2 }), "round $round: 2 in flight");
    my $wait = 1.25 - (time - $b->{since});
    sleep $wait if $wait > 0;
    my @seen = map { scalar(blockers()) } 1 .. 4;
    is_deeply(\@seen, [2, 2, 2, 2], "round $round: both listed at 1.25 s, by either worker");
    $a->{c}->close;
    ok(wait_for(sub { (scope_status('default') // {})->{inflight} == 1 }), "round $round: 1 in flight");
    @seen = map { scalar(blockers()) } 1 .. 4;
    is_deeply(\@seen, [1, 1, 1, 1], "round $round: the one that ended is gone from every answer");
    $b->{c}->close;
    ok(wait_for(sub { !blockers() }), "round $round: none once both ended");
}

finish();
