#!/usr/bin/perl
# drain.t: `GET|HEAD drain` and `POST enable?wait=drained`.
# - An idle instance drains at once (200, drained=true, inflight=0, one entry per scope);
#   a slow request in a location WITHOUT intermission does not count.
# - A slow request (backend ?sleep=1500) in flight: status shows inflight=1, drain does
#   not answer while it runs and answers 200 after the slow response (not before it) and
#   within 2 s of it, with waited_ms covering the wait.
# - drain?timeout=500ms with a request in flight: 503 {"drained":false,"error":"drain
#   timed out","inflight":1,...} after about 500 ms; drain?scope=S only waits for S.
# - Held requests are not in flight: paused with requests held, drain answers at once;
#   after the resume a released slow request is in flight again and drain waits for it.
# - Several concurrent waiters (GET, HEAD, scope=default) are all answered.
# - enable?wait=drained pauses at once (status shows paused while it waits, new requests
#   are held), answers 200 with drained=true once the in-flight request ended; with
#   &timeout=300ms and a long request it answers 503 drained=false inflight=1 and the
#   scope stays paused.
# - worker_processes 2 + reuseport: the slow request in one worker, drain waiters on
#   control connections of both workers: all answered promptly after the slow response.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $PROMPT = 2;    # coarse bound (s) for "answered right after the last request ended"

my $CONF = <<'CONF';
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /other/ {
            intermission other;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /free/ {
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

start_nginx($CONF);
my $port = port('PORT');

# send a request that stays in flight; returns the connection once the backend has it
sub in_flight {
    my ($path, %o) = @_;
    my $c = http_connect($o{port} // $port);
    $c->send_request(path => $path, keepalive => 0, ($o{headers} ? (headers => $o{headers}) : ()));
    my $seen = wait_for(sub { grep { $_->{uri} eq $path } backend_log() });
    ok($seen, "$path reached the backend");
    return $c;
}

sub inflight_of { my $s = scope_status($_[0]); $s ? $s->{inflight} : undef }

sub scope_map { my ($j) = @_; +{ map { $_->{name} => $_->{inflight} } @{ ($j && $j->{scopes}) || [] } } }

# ---- idle: drains at once
{
    my $t0 = time;
    my ($st, $h, $j, $raw) = ctl('GET', 'drain');
    is($st, 200, 'idle drain: 200');
    like($h->{'content-type'} // '', qr{^application/json}, 'idle drain: JSON content type');
    like($raw // '', qr/"drained"\s*:\s*true/, 'idle drain: "drained":true (a JSON boolean)');
    is($j && $j->{inflight}, 0, 'idle drain: inflight=0');
    ok($j && defined $j->{waited_ms} && $j->{waited_ms} >= 0 && $j->{waited_ms} < 1000,
       'idle drain: waited_ms small') or diag($raw);
    is_deeply(scope_map($j), { default => 0, other => 0 }, 'idle drain: every scope listed, inflight 0');
    cmp_ok(time - $t0, '<', $PROMPT, 'idle drain answered at once');

    my $s = ctl_status();
    my ($d) = grep { $_->{name} eq 'default' } @{ ($s && $s->{scopes}) || [] };
    is($d && $d->{inflight}, 0, 'status: inflight=0 when idle');
    for my $k (qw(timed_out rejected)) {
        is($d && $d->{counters}{$k}, 0, "status counters have \"$k\" = 0");
    }
}

# ---- a request in a location without intermission is not in flight
{
    my $c = in_flight('/free/slow?sleep=1500');
    my $t0 = time;
    my ($st, undef, $j) = ctl('GET', 'drain');
    is($st, 200, 'drain ignores a request of a location without intermission');
    cmp_ok(time - $t0, '<', 1, '... and answers at once');
    is(inflight_of('default'), 0, 'status: inflight=0 for it');
    my ($rst) = $c->read_response(5);
    is($rst, 200, 'the free request answered');
    $c->close;
}

# ---- drain waits for a slow request and answers after it
{
    my $a = in_flight('/slow/1?sleep=1500');
    ok(wait_inflight('default', 1), 'status: inflight=1 while the slow request runs');
    is(inflight_of('other'), 0, 'status: other scope inflight=0');
    my $t_sent = time;
    my $d = ctl_send('GET', 'drain');
    ok(!$d->readable(0.3), 'drain not answered while the request is in flight');
    my ($ra, $rd) = read_responses(5, $a, $d);
    is($ra && $ra->[0], 200, 'slow request answered 200');
    is($rd && $rd->[0], 200, 'drain answered 200');
    if ($ra && $rd) {
        cmp_ok($rd->[3], '>=', $ra->[3] - 0.05, 'drain answered after the slow response');
        cmp_ok($rd->[3] - $ra->[3], '<', $PROMPT, "drain answered within ${PROMPT}s of it");
    }
    my $j = $rd && eval { JSON::PP->new->decode($rd->[2]) };
    ok($j && $j->{drained}, 'drain: drained=true') or diag($rd && $rd->[2]);
    is($j && $j->{inflight}, 0, 'drain: inflight=0');
    is_deeply(scope_map($j), { default => 0, other => 0 }, 'drain: scopes all 0');
    cmp_ok($j && $j->{waited_ms} // -1, '>=', 300, 'drain: waited_ms covers the wait');
    cmp_ok($j && $j->{waited_ms} // 1e9, '<=', (time - $t_sent) * 1000 + 50, 'drain: waited_ms not more than the wait');
    is(inflight_of('default'), 0, 'status: inflight=0 afterwards');
    $a->close;
    $d->close;
}

# ---- drain with a timeout: 503 while a request is in flight; per-scope drain
{
    my $a = in_flight('/slow/2?sleep=2500');
    my $t0 = time;
    my ($st, $h, $j, $raw) = ctl('GET', 'drain', 'timeout=500ms');
    my $el = time - $t0;
    is($st, 503, 'drain?timeout=500ms with a request in flight: 503') or diag($raw);
    like($h->{'content-type'} // '', qr{^application/json}, '503 drain: JSON content type');
    like($raw // '', qr/"drained"\s*:\s*false/, '503 drain: "drained":false');
    is($j && $j->{error}, 'drain timed out', '503 drain: error "drain timed out"');
    is($j && $j->{inflight}, 1, '503 drain: inflight=1');
    is_deeply(scope_map($j), { default => 1, other => 0 }, '503 drain: scopes default=1, other=0');
    cmp_ok($j && $j->{waited_ms} // -1, '>=', 450, '503 drain: waited_ms about the timeout');
    cmp_ok($el, '>=', 0.45, '503 drain: not answered before the timeout');
    cmp_ok($el, '<', 3, '503 drain: answered soon after the timeout');

    ($st, undef, $j, $raw) = ctl('GET', 'drain', 'scope=other');
    is($st, 200, 'drain?scope=other: 200 while default has a request in flight');
    is_deeply(scope_map($j), { other => 0 }, 'drain?scope=other lists only other');

    ($st, undef, $j, $raw) = ctl('GET', 'drain', 'scope=default&timeout=300ms');
    is($st, 503, 'drain?scope=default&timeout=300ms: 503');
    is_deeply(scope_map($j), { default => 1 }, '... lists only default, inflight 1');

    my $d = ctl_send('GET', 'drain', 'scope=default');
    my ($ra, $rd) = read_responses(5, $a, $d);
    is($ra && $ra->[0], 200, 'slow request answered');
    is($rd && $rd->[0], 200, 'drain?scope=default answered 200 after it');
    cmp_ok($rd->[3], '>=', $ra->[3] - 0.05, '... after the slow response') if $ra && $rd;
    $a->close;
    $d->close;
}

# ---- held requests are not in flight
{
    is(scalar ctl('POST', 'enable'), 200, 'paused');
    my @c = map { http_connect($port) } 1 .. 3;
    $c[0]->send_request(path => '/held/1', keepalive => 0);
    $c[1]->send_request(path => '/held/2', keepalive => 0);
    $c[2]->send_request(path => '/held/3?sleep=1000', keepalive => 0);
    ok(wait_held('default', 3), 'three requests held');
    is(inflight_of('default'), 0, 'status: held requests are not in flight');

    my $t0 = time;
    my ($st, undef, $j) = ctl('GET', 'drain');
    is($st, 200, 'drain while paused with held requests: 200');
    cmp_ok(time - $t0, '<', $PROMPT, '... at once');
    is($j && $j->{inflight}, 0, '... inflight=0');
    ok(none_readable(0.1, @c), 'held requests still held after the drain');

    is(scalar ctl('POST', 'disable'), 200, 'resumed');
    ok(wait_for(sub { grep { $_->{uri} eq '/held/3?sleep=1000' } backend_log() }),
       'released slow request reached the backend');
    my $d = ctl_send('GET', 'drain');
    ok(!$d->readable(0.3), 'drain waits for the released request still in flight');
    my @r = read_responses(5, @c, $d);
    is(scalar(grep { $_ && $_->[0] == 200 } @r[0 .. 2]), 3, 'released requests answered 200');
    is($r[3] && $r[3][0], 200, 'drain answered 200');
    cmp_ok($r[3][3], '>=', $r[2][3] - 0.05, 'drain answered after the released slow request')
        if $r[2] && $r[3];
    $_->close for @c, $d;
}

# ---- several concurrent waiters
{
    my $a = in_flight('/slow/3?sleep=1200');
    my @d = map { ctl_send('GET', 'drain') } 1 .. 5;
    push @d, ctl_send('GET', 'drain', 'scope=default');
    my $hd = ctl_send('HEAD', 'drain');
    ok(none_readable(0.3, @d, $hd), 'no waiter answered while the request is in flight');
    my @r = read_responses(5, $a, @d, $hd);
    my $ra = shift @r;
    my $rh = pop @r;
    is($ra && $ra->[0], 200, 'slow request answered');
    is(scalar(grep { $_ && $_->[0] == 200 } @r), scalar @d, 'every GET waiter answered 200');
    is(scalar(grep { $_ && (eval { JSON::PP->new->decode($_->[2])->{drained} } // 0) } @r), scalar @d,
       'every GET waiter: drained=true');
    is(scalar(grep { $_ && $ra && $_->[3] >= $ra->[3] - 0.05 } @r), scalar @d,
       'every waiter answered after the slow response');
    is($rh && $rh->[0], 200, 'HEAD waiter answered 200');
    ok($hd->closed(2) && $hd->pending_bytes == 0, 'HEAD waiter: no body');
    $_->close for $a, @d, $hd;
}

# ---- enable?wait=drained
{
    my $a = in_flight('/slow/4?sleep=1500');
    my $e = ctl_send('POST', 'enable', 'wait=drained');
    ok(!$e->readable(0.3), 'enable?wait=drained not answered while a request is in flight');
    my $s = scope_status('default');
    ok($s && $s->{paused}, 'status: paused while the enable waits');
    is($s && $s->{inflight}, 1, 'status: inflight=1 while the enable waits');
    my $n = http_connect($port);
    $n->send_request(path => '/during-wait', keepalive => 0);
    ok(wait_held('default', 1), 'a new request is held while the enable waits');

    my ($ra, $re) = read_responses(5, $a, $e);
    is($ra && $ra->[0], 200, 'in-flight request answered 200');
    is($re && $re->[0], 200, 'enable?wait=drained answered 200');
    cmp_ok($re->[3], '>=', $ra->[3] - 0.05, '... after the in-flight response') if $ra && $re;
    cmp_ok($re->[3] - $ra->[3], '<', $PROMPT, "... within ${PROMPT}s of it") if $ra && $re;
    my $raw = $re ? $re->[2] : '';
    my $j = eval { JSON::PP->new->decode($raw) };
    is($j && $j->{action}, 'pause', 'wait=drained answer: action pause');
    like($raw, qr/"drained"\s*:\s*true/, 'wait=drained answer: "drained":true');
    is($j && $j->{inflight}, 0, 'wait=drained answer: inflight=0');
    cmp_ok($j && $j->{waited_ms} // -1, '>=', 300, 'wait=drained answer: waited_ms covers the wait');
    my ($d) = grep { $_->{name} eq 'default' } @{ ($j && $j->{scopes}) || [] };
    ok($d && $d->{paused}, 'wait=drained answer: default paused');

    $s = scope_status('default');
    ok($s && $s->{paused}, 'still paused after the drained answer');
    is($s && $s->{held}, 1, 'the new request still held');
    ok(!$n->readable(0), '... and not answered');
    is(scalar ctl('POST', 'disable'), 200, 'resumed');
    my ($nst) = $n->read_response(5);
    is($nst, 200, 'held request answered after resume');
    $_->close for $a, $e, $n;
}

# ---- enable?wait=drained&timeout=300ms with a long request: 503, stays paused
{
    my $a = in_flight('/slow/5?sleep=2500');
    my $t0 = time;
    my ($st, $h, $j, $raw) = ctl('POST', 'enable', 'scope=default&wait=drained&timeout=300ms');
    my $el = time - $t0;
    is($st, 503, 'enable?wait=drained&timeout=300ms: 503') or diag($raw);
    like($h->{'content-type'} // '', qr{^application/json}, '... JSON content type');
    is($j && $j->{action}, 'pause', '... action pause');
    like($raw // '', qr/"drained"\s*:\s*false/, '... "drained":false');
    is($j && $j->{inflight}, 1, '... inflight=1');
    is($j && $j->{error}, 'drain timed out', '... error "drain timed out"');
    my ($d) = grep { $_->{name} eq 'default' } @{ ($j && $j->{scopes}) || [] };
    ok($d && $d->{paused}, '... scope entry paused');
    cmp_ok($el, '>=', 0.25, '... not before the timeout');
    cmp_ok($el, '<', 2.5, '... soon after the timeout');
    my $s = scope_status('default');
    ok($s && $s->{paused}, 'scope stays paused after the 503');
    is($s && $s->{inflight}, 1, 'status: still inflight=1');
    is(scalar ctl('POST', 'disable'), 200, 'resumed');
    my ($ast) = $a->read_response(5);
    is($ast, 200, 'long request answered');
    $a->close;
}

stop_nginx();

# ---- two workers: the waiter possibly in the other worker
start_nginx(<<'CONF');
worker_processes 2;
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
            add_header X-Worker $pid always;
        }
    }
}
CONF

{
    my @w = worker_pids();
    is(scalar @w, 2, 'two workers');
    my $a = in_flight('/mw/slow?sleep=1500');
    my ($log) = grep { $_->{uri} eq '/mw/slow?sleep=1500' } backend_log();
    my $sw = $log && $log->{worker};
    ok($sw && grep({ $_ == $sw } @w), 'slow request served by a worker') or diag("X-Worker: " . ($sw // 'none'));

    # keep-alive control connections pinned to a known worker
    my (%conn, @spare);
    for (1 .. 60) {
        last if $conn{same} && $conn{other};
        my $c = http_connect(port('CTL_PORT'));
        my ($st, $h, $b) = $c->request(method => 'GET', path => '/ctl/status', keepalive => 1);
        my $cw = $h && $h->{'x-worker'};
        last unless $st && $st == 200 && defined $cw;
        my $k = ($sw && $cw == $sw) ? 'same' : 'other';
        if ($conn{$k}) { push @spare, $c; next }
        $conn{$k} = $c;
        my $j = eval { JSON::PP->new->decode($b) };
        my ($d) = grep { $_->{name} eq 'default' } @{ ($j && $j->{scopes}) || [] };
        is($d && $d->{inflight}, 1, "status from the $k worker: inflight=1");
    }
    $_->close for @spare;
    ok($conn{other}, 'a control connection on the other worker') or diag('X-Worker header missing or no spread');
    ok($conn{same}, 'a control connection on the slow request\'s worker');
    my @k = grep { $conn{$_} } qw(same other);
    my @d = map { ctl_send('GET', 'drain', undef, conn => $conn{$_}) } @k;
    push @d, map { ctl_send('GET', 'drain') } 1 .. 4;    # and some on random workers
    ok(none_readable(0.3, @d), 'no waiter answered while the request is in flight');
    my @r = read_responses(5, $a, @d);
    my $ra = shift @r;
    is($ra && $ra->[0], 200, 'slow request answered');
    for my $i (0 .. $#d) {
        my $name = $i < @k ? "waiter on the $k[$i] worker" : 'waiter ' . ($i - @k + 1) . ' (random worker)';
        is($r[$i] && $r[$i][0], 200, "$name answered 200");
        next unless $r[$i] && $ra;
        cmp_ok($r[$i][3], '>=', $ra->[3] - 0.05, "$name answered after the slow response");
        cmp_ok($r[$i][3] - $ra->[3], '<', $PROMPT, "$name answered within ${PROMPT}s of it");
    }
    $_->close for $a, @d;
}

finish();
