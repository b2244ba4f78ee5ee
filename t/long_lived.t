#!/usr/bin/perl
# long_lived.t: WebSockets, server-sent events and long downloads during a maintenance
# (2 workers, reuseport, so that the connections are spread over both).
# - An open WebSocket (101) is not in flight for a drain: status counts it as "upgraded"
#   (inflight 0), `enable?wait=drained` answers 200 drained at once with "upgraded":1 in
#   the scope's entry, and the WebSocket keeps working during the pause; metrics has
#   intermission_upgraded.
# - An SSE stream in an `intermission_drain off` location is a "stream": status counts it
#   (inflight 0), a drain answers at once, the stream goes on during the pause.
# - The same endless stream in an unmarked location blocks the drain: status names it in
#   "blockers" (method, path without the query, age, worker pid) once it is over a second
#   old, and the timed-out drain (503) names it too.
# - `intermission_close_on_pause on`: the pause closes the location's WebSockets (in both
#   workers) and streams; a client that connects again is held; after the backend restarts
#   and the scope resumes, it is upgraded by the new backend (another pid). A WebSocket of a
#   location without the directive stays open.
# - `intermissionctl run -- true` succeeds with a WebSocket and an SSE stream open, and says
#   it did not wait for them; with an endless unmarked stream it fails at the drain and
#   names the blocker.
# - After a reload, the old workers' WebSockets still count and a pause closes them; a
#   worker killed with SIGKILL takes its WebSockets out of the count (slots reaped).
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $WS = <<'WS';
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
WS

my $CONF = <<"CONF";
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        location /ws {
            intermission on;
$WS
        }
        location /wsclose {
            intermission on;
            intermission_close_on_pause on;
$WS
        }
        location /events {
            intermission on;
            intermission_drain off;
            proxy_buffering off;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /events-close {
            intermission on;
            intermission_drain off;
            intermission_close_on_pause on;
            proxy_buffering off;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location / {
            intermission on;
            proxy_buffering off;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

start_nginx($CONF);
my $port = port('PORT');

sub default_scope { scope_status('default') // {} }

# an echo over an open WebSocket: the backend's pid, or undef
sub echo {
    my ($c, $msg) = @_;
    $c->send_raw($msg);
    my $got = $c->read_until(qr/\d+:\Q$msg\E/, 3) // return undef;
    my ($pid) = $got =~ /(\d+):\Q$msg\E/;
    return $pid;
}

sub sse_open {
    my ($path) = @_;
    my $c = http_connect($port);
    $c->send_request(path => $path);
    my ($st) = $c->read_head;
    return ($c, $st);
}

sub entry_of {
    my ($j, $name) = @_;
    my ($e) = grep { $_->{name} eq $name } @{ ($j && $j->{scopes}) || [] };
    return $e // {};
}

# ---- an open WebSocket does not block a drain
{
    my ($c, $st, $h) = ws_open($port, '/ws');
    is($st, 101, 'WebSocket: 101 Switching Protocols through nginx');
    my $pid = echo($c, 'hello');
    ok($pid, 'WebSocket: the backend echoes');
    ok(wait_for(sub { (default_scope()->{upgraded} // 0) == 1 }), 'status: upgraded 1');
    is(default_scope()->{inflight}, 0, 'status: the WebSocket is not in flight');
    my (undef, undef, $metrics) = http_get(port('CTL_PORT'), '/ctl/metrics');
    like($metrics // '', qr/^intermission_upgraded\{scope="default"\} 1$/m, 'metrics: intermission_upgraded 1');

    my $t0 = time;
    my ($s, undef, $j, $raw) = ctl('POST', 'enable', { wait => 'drained', timeout => '5s' });
    is($s, 200, 'enable?wait=drained with an open WebSocket: 200') or diag($raw);
    ok($j && $j->{drained}, 'drained');
    cmp_ok(time - $t0, '<', 2, 'answered at once, not at the timeout');
    is(entry_of($j, 'default')->{upgraded}, 1, 'the answer counts the upgraded connection');
    is(echo($c, 'during'), $pid, 'the WebSocket keeps working during the pause');
    my ($s2) = ctl('POST', 'disable');
    is($s2, 200, 'resume');
    is(echo($c, 'after'), $pid, 'and after it');
    $c->close;
    ok(wait_for(sub { (default_scope()->{upgraded} // 1) == 0 }), 'closed: upgraded 0');
}

# ---- an SSE stream of an `intermission_drain off` location does not block it either
{
    my ($c, $st) = sse_open('/events?stream=0');
    is($st, 200, 'SSE: 200');
    ok(defined $c->read_until(qr/data: \d+ 2\n\n/), 'SSE: events flow');
    ok(wait_for(sub { (default_scope()->{streams} // 0) == 1 }), 'status: streams 1');
    is(default_scope()->{inflight}, 0, 'status: the stream is not in flight');
    my ($s, undef, $j) = ctl('GET', 'drain', { timeout => '5s' });
    is($s, 200, 'drain with an open SSE stream: 200');
    is(entry_of($j, 'default')->{streams}, 1, 'the drain answer counts the stream');
    ctl('POST', 'enable');
    my $more = $c->read_until(qr/data: \d+ 8\n\n/);
    ok(defined $more, 'the stream goes on during the pause');
    ctl('POST', 'disable');
    $c->close;
    ok(wait_for(sub { (default_scope()->{streams} // 1) == 0 }), 'closed: streams 0');
}

# ---- the same stream in an unmarked location blocks the drain, and is named
{
    my ($c, $st) = sse_open('/slow?stream=0&secret=1');
    is($st, 200, 'unmarked stream: 200');
    ok(wait_for(sub { (default_scope()->{inflight} // 0) == 1 }), 'it is in flight');
    my $b;
    ok(wait_for(sub { ($b) = @{ default_scope()->{blockers} // [] }; $b }, 5),
       'status lists it as a blocker once it is over a second old');
    is($b && $b->{method}, 'GET', 'blocker: method');
    is($b && $b->{path}, '/slow', 'blocker: the path, without the query');
    cmp_ok($b && $b->{age_ms}, '>=', 1000, 'blocker: its age');
    ok($b && grep({ $_ == $b->{pid} } worker_pids()), 'blocker: the worker that has it');
    my ($s, undef, $j, $raw) = ctl('GET', 'drain', { timeout => '1500ms' });
    is($s, 503, 'drain: times out');
    my ($jb) = @{ entry_of($j, 'default')->{blockers} // [] };
    is($jb && $jb->{path}, '/slow', 'the timed-out drain names the blocker') or diag($raw);
    ($s, undef, $j, $raw) = ctl('POST', 'enable', { wait => 'drained', timeout => '1s' });
    is($s, 503, 'enable?wait=drained: times out');
    ($jb) = @{ entry_of($j, 'default')->{blockers} // [] };
    is($jb && $jb->{path}, '/slow', 'and names the blocker') or diag($raw);
    ctl('POST', 'disable');
    $c->close;
    ok(wait_for(sub { !@{ default_scope()->{blockers} // [1] } }), 'ended: no blockers');
}

# ---- intermission_close_on_pause: clients reconnect into the hold, onto the new backend
{
    my @ws = map { [ws_open($port, '/wsclose')] } 1 .. 6;
    is(scalar(grep { ($_->[1] // 0) == 101 } @ws), 6, 'six WebSockets open');
    my $old = echo($ws[0][0], 'x');
    my ($keep, $kst) = ws_open($port, '/ws');
    is($kst, 101, 'and one in a location without close_on_pause');
    my ($sse, $sst) = sse_open('/events-close?stream=0');
    is($sst, 200, 'and one SSE stream with close_on_pause');
    ok(wait_for(sub { (default_scope()->{upgraded} // 0) == 7 }), 'upgraded 7');

    my ($s) = ctl('POST', 'enable');
    is($s, 200, 'pause');
    is(scalar(grep { $_->[0]->closed(3) } @ws), 6, 'the pause closed every close_on_pause WebSocket');
    ok($sse->closed(3), 'and the SSE stream');
    is(echo($keep, 'k'), $old, 'the other WebSocket stays open');
    ok(wait_for(sub { my $d = default_scope(); ($d->{upgraded} // 0) == 1 && ($d->{streams} // 1) == 0 }),
       'nginx finalized the closed ones: upgraded 1, streams 0') or diag(explain(default_scope()));

    my ($again, $ast) = ws_open($port, '/wsclose', timeout => 1);
    ok(!defined $ast, 'a client that connects again is held');
    ok(wait_held('default', 1), 'held 1');
    my $bport = backend_port();
    stop_backend();
    start_backend(port => $bport, keep_log => 1);
    ctl('POST', 'disable');
    my ($st2) = $again->read_head;
    is($st2, 101, 'after the resume it is upgraded');
    my $new = echo($again, 'y');
    ok($new && $new != $old, 'by the restarted backend');
    $_->[0]->close for @ws;
    $again->close;
    $keep->close;
}

# ---- intermissionctl run: a whole maintenance with a WebSocket and an SSE stream open
{
    my ($ws, $wst) = ws_open($port, '/ws');
    my ($sse, $sst) = sse_open('/events?stream=0');
    is("$wst $sst", '101 200', 'a WebSocket and an SSE stream are open');
    ok(wait_for(sub { my $d = default_scope(); ($d->{upgraded} // 0) == 1 && ($d->{streams} // 0) == 1 }),
       'status: upgraded 1, streams 1');
    my $ep = 'http://127.0.0.1:' . port('CTL_PORT') . '/ctl/';
    my ($rc, $out, $err) = intermissionctl('run', '--endpoint', $ep, '--drain-timeout', '5s', '--', 'true');
    is($rc, 0, 'intermissionctl run succeeds') or diag("$out\n$err");
    like("$out$err", qr/not waited for: 1 upgraded, 1 stream/, 'and says what it did not wait for')
        or diag("$out$err");
    ok(echo($ws, 'still'), 'the WebSocket is still open after the run');
    ok(defined $sse->read_until(qr/data: \d+ \d+\n\n/), 'and the stream flows');
    $ws->close;
    $sse->close;
}

# ---- intermissionctl run: a drain that times out names what blocks it
{
    my ($c, $st) = sse_open('/slow?stream=0');
    ok(wait_for(sub { (default_scope()->{inflight} // 0) == 1 }), 'an endless unmarked stream is in flight');
    my $ep = 'http://127.0.0.1:' . port('CTL_PORT') . '/ctl/';
    my ($rc, $out, $err) = intermissionctl('run', '--endpoint', $ep, '--drain-timeout', '3s', '--', 'true');
    is($rc, 1, 'intermissionctl run fails at the drain');
    like($err, qr{GET /slow \(\d+ s, worker \d+\)}, 'naming the blocker') or diag($err);
    ok(!default_scope()->{paused}, 'and resumed what it paused');
    $c->close;
}

# ---- across a reload and a worker killed with SIGKILL
{
    my @ws = map { [ws_open($port, '/wsclose')] } 1 .. 4;
    is(scalar(grep { ($_->[1] // 0) == 101 } @ws), 4, 'four close_on_pause WebSockets open');
    ok(wait_for(sub { (default_scope()->{upgraded} // 0) == 4 }), 'upgraded 4');
    reload_nginx($CONF);
    ok(wait_for(sub { (default_scope()->{upgraded} // 0) == 4 }),
       'after a reload the old workers\' WebSockets still count');
    ctl('POST', 'enable');
    is(scalar(grep { $_->[0]->closed(3) } @ws), 4, 'a pause closes them in the old workers too');
    ok(wait_for(sub { (default_scope()->{upgraded} // 1) == 0 }), 'upgraded 0');
    ctl('POST', 'disable');

    my @k = map { [ws_open($port, '/ws')] } 1 .. 4;
    ok(wait_for(sub { (default_scope()->{upgraded} // 0) == 4 }), 'four more open');
    kill 'KILL', worker_pids();
    is(scalar(grep { $_->[0]->closed(3) } @k), 4, 'the workers are killed with SIGKILL');
    ok(wait_for(sub { defined default_scope()->{upgraded} && default_scope()->{upgraded} == 0 }, 10),
       'their WebSockets leave the count with them')
        or diag(explain(default_scope()));
    allow_alerts(qr/exited on signal 9/);
    $_->[0]->close for @ws, @k;
}

finish();
