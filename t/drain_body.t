#!/usr/bin/perl
# drain_body.t: a control request that waits (`GET drain`, `POST enable?wait=drained`)
# keeps discarding its request body while it waits, and its wait is not cut short by
# nginx's lingering_timeout: that limit is for a body nginx discards AFTER the response,
# while a waiting control request has not answered yet. The keep-alive connection stays
# in step: the body's bytes that arrive during the wait are dropped, and a request
# pipelined after them is answered after the wait's answer.
# Each case: a slow request (the backend sleeps) is in flight in scope default; the control
# request is sent with its headers and the first 10 bytes of a 20-byte body (Content-Length:
# 20, or chunked), so that it starts waiting before its body is complete; then the other 10
# bytes, then (pipelined, same connection) `GET /ctl/status`. Expected on that connection:
# the wait's answer (200 drained:true once the slow request ended, or 503 drained:false at
# the timeout), then the status answer (200, JSON), nothing else, and the connection still
# answers one more request.
# - The control server on CTL_PORT has `lingering_timeout 1s`, shorter than the waits: the
#   body's second half comes at 0.4 s, or, in the "stalled body" cases, at 1.6 s.
# - One case on CTL2_PORT with nginx's default lingering_timeout (5s) and a wait of ~6 s.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            proxy_read_timeout 30s;
        }
    }
    server {
        listen 127.0.0.1:%%CTL_PORT%%;
        lingering_timeout 1s;
        location /ctl/ {
            intermission_control;
        }
    }
    server {
        listen 127.0.0.1:%%CTL2_PORT%%;
        location /ctl/ {
            intermission_control;
        }
    }
}
CONF

my $port = port('PORT');
my $seq = 0;

sub json_of { my ($b) = @_; eval { JSON::PP->new->decode($b // '') } }

# case(%o): what => 'drain' | 'enable', framing => 'length' | 'chunked', sleep_ms (the slow
# request), timeout (the wait's), expect => 200 | 503, stall => seconds before the body's
# second half is sent (default 0.4), ctl_port (default CTL_PORT), tag
sub case {
    my (%o) = @_;
    my ($what, $framing, $expect) = @o{qw(what framing expect)};
    my $stall = $o{stall} // 0.4;
    my $tag = "$what, $framing body, " . ($expect == 200 ? 'drained' : 'timeout')
            . ($stall > 1 ? ', stalled body' : '') . ($o{tag} ? ", $o{tag}" : '');
    $seq++;
    my $path = "/slow/$seq?sleep=$o{sleep_ms}";
    my $slow = http_connect($port);
    $slow->send_request(path => $path, keepalive => 0);
    ok(wait_for(sub { grep { $_->{uri} eq $path } backend_log() }, 5), "$tag: a slow request is in flight");

    my $line = $what eq 'drain' ? "GET /ctl/drain?timeout=$o{timeout}"
             : "POST /ctl/enable?wait=drained&timeout=$o{timeout}";
    my ($head, $first, $rest);
    if ($framing eq 'length') {
        $head = "Content-Length: 20\r\n";
        ($first, $rest) = ('0123456789', 'abcdefghij');
    } else {
        $head = "Transfer-Encoding: chunked\r\n";
        ($first, $rest) = ("a\r\n0123456789\r\n", "a\r\nabcdefghij\r\n0\r\n\r\n");
    }
    my $c = http_connect($o{ctl_port} // port('CTL_PORT'));
    my $t0 = time;
    $c->send_raw("$line HTTP/1.1\r\nHost: localhost\r\n$head\r\n$first");
    ok(none_readable($stall, $c), sprintf('%s: the control request waits (no answer, connection open at %.1f s)', $tag, $stall))
        or diag(sprintf('after %.2f s: %s', time - $t0,
                        $c->eof ? 'connection closed' : 'answer: ' . substr($c->{rbuf}, 0, 60)));
    $c->send_raw($rest);
    sleep 0.1;
    $c->send_raw("GET /ctl/status HTTP/1.1\r\nHost: localhost\r\n\r\n");

    my ($st, $h, $body) = $c->read_response(10);
    my $t1 = time;
    is($st, $expect, "$tag: the wait answers $expect")
        or diag(sprintf('got: %s after %.2f s%s', $st // 'nothing', $t1 - $t0, $c->eof ? ', connection closed' : ''));
    my $j = json_of($body);
    is($j && ($j->{drained} ? 1 : 0), $expect == 200 ? 1 : 0, "$tag: ... drained " . ($expect == 200 ? 'true' : 'false'))
        or diag($body // 'no body');
    note(sprintf '%s: answered after %.2f s', $tag, $t1 - $t0);

    my ($st2, $h2, $body2) = $c->read_response(5);
    is($st2, 200, "$tag: then the pipelined status is answered 200 on the same connection")
        or diag(sprintf('got: %s%s', $st2 // 'nothing',
                        $c->eof ? sprintf(' (connection closed %.2f s after the first answer)', time - $t1) : ''));
    my $sj = json_of($body2);
    ok($sj && ref $sj->{scopes} eq 'ARRAY', "$tag: ... with the status JSON") or diag($body2 // 'no body');
    ok(none_readable(0.3, $c), "$tag: nothing else arrives on the connection");
    my ($st3) = $c->eof ? () : $c->request(method => 'GET', path => '/ctl/status', keepalive => 0, timeout => 3);
    is($st3, 200, "$tag: the connection still answers a request");
    $c->close;

    my ($sst) = $slow->read_response(10);
    is($sst, 200, "$tag: the slow request answered 200");
    $slow->close;
    is(scalar ctl('POST', 'resume'), 200, "$tag: resumed") if $what eq 'enable';
}

case(what => 'drain',  framing => 'length',  sleep_ms => 1500, timeout => '3s', expect => 200);
case(what => 'enable', framing => 'length',  sleep_ms => 1500, timeout => '3s', expect => 200);
case(what => 'drain',  framing => 'chunked', sleep_ms => 1500, timeout => '3s', expect => 200);
case(what => 'enable', framing => 'chunked', sleep_ms => 1500, timeout => '3s', expect => 200);
case(what => 'drain',  framing => 'length',  sleep_ms => 4000, timeout => '2s', expect => 503);
case(what => 'enable', framing => 'chunked', sleep_ms => 4000, timeout => '2s', expect => 503);
case(what => 'drain',  framing => 'length',  sleep_ms => 2500, timeout => '5s', expect => 200, stall => 1.6);
case(what => 'enable', framing => 'chunked', sleep_ms => 2500, timeout => '5s', expect => 200, stall => 1.6);
case(what => 'drain',  framing => 'chunked', sleep_ms => 6000, timeout => '2500ms', expect => 503, stall => 1.6);
case(what => 'drain',  framing => 'length',  sleep_ms => 6000, timeout => '10s', expect => 200,
     ctl_port => port('CTL2_PORT'), tag => 'default lingering_timeout');

finish();
