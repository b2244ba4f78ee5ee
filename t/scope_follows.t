#!/usr/bin/perl
# scope_follows.t: a request belongs to the scope of the location it is in now. An internal
# redirect (error_page to a named location, try_files' fallback) that moves a request into
# a location of another scope moves it into that scope: it is held there while that scope
# is paused, counted in flight there, and a drain of that scope waits for it.
# /api/ (scope api) proxies to a closed port (connection refused -> 502), and
# `error_page 502 = @legacy` sends it on to @legacy (scope legacy), which proxies to the
# backend; /t/ (scope tscope) goes through `try_files /nonexistent @tnamed` to @tnamed
# (scope legacy). $intermission_result is logged with a log_format.
# - legacy paused, api running: GET /api/x is held in legacy (legacy held 1, api held 0),
#   nothing reaches the backend while held; resume legacy: answered 200, the backend got
#   it once, $intermission_result "released".
# - the same through try_files into @tnamed.
# - nothing paused, the backend slow: /api/slow is in flight in legacy (legacy inflight 1,
#   api inflight 0); drain?scope=legacy answers 503 at its timeout while it runs, 200 after
#   it ended; drain?scope=api answers 200 at once.
# - api paused, legacy running: /api/x is held in api (it never reached the closed port);
#   after the resume it gets its 502, goes on to @legacy (running) and is answered 200 by
#   the backend, once.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
http {
    log_format res '$request_uri|$intermission_result|$status';
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%PREFIX%%/res.log res;
        location /api/ {
            intermission api;
            proxy_pass http://127.0.0.1:%%DEAD_PORT%%;
            error_page 502 = @legacy;
        }
        location @legacy {
            intermission legacy;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            proxy_read_timeout 30s;
        }
        location /t/ {
            intermission tscope;
            try_files /nonexistent @tnamed;
        }
        location @tnamed {
            intermission legacy;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');    # port('DEAD_PORT') is never listened on

sub held_of { my $s = scope_status($_[0]); $s ? $s->{held} : undef }
sub inflight_of { my $s = scope_status($_[0]); $s ? $s->{inflight} : undef }
sub at_backend { my ($uri) = @_; scalar grep { $_->{uri} eq $uri } backend_log() }
sub refused { scalar error_log_lines(qr/connect\(\) failed.*\Q$_[0]\E/) }

# result($uri) -> $intermission_result of the access-log line for $uri (waits for it)
sub result {
    my ($uri) = @_;
    my $line;
    wait_for(sub { ($line) = grep { (split /\|/)[0] eq $uri } file_lines('res.log'); $line }, 3);
    return $line ? (split /\|/, $line, -1)[1] : undef;
}

# a sanity check of the setup: not paused, /api/ falls through to @legacy's backend
{
    my ($st, undef, $body) = http_get($port, '/api/pre');
    is($st, 200, 'not paused: /api/pre answered 200 through @legacy');
    is(at_backend('/api/pre'), 1, '... by the backend');
    ($st) = http_get($port, '/t/pre');
    is($st, 200, 'not paused: /t/pre answered 200 through @tnamed');
}

# ---- legacy paused: error_page into @legacy holds the request there
{
    is(scalar ctl('POST', 'pause', 'scope=legacy'), 200, 'legacy paused (api running)');
    my $c = http_connect($port);
    $c->send_request(path => '/api/x', keepalive => 0);
    ok(wait_for(sub { (held_of('legacy') // 0) == 1 }, 3),
       'error_page -> @legacy: /api/x is held in scope legacy (legacy held 1)');
    is(held_of('api'), 0, '... not in api (api held 0)');
    ok(none_readable(0.5, $c), '... not answered while legacy is paused');
    is(at_backend('/api/x'), 0, '... nothing reached the backend while held');
    my (undef, undef, $j) = ctl('POST', 'resume', 'scope=legacy');
    is($j && $j->{scopes}[0]{released}, 1, 'resume legacy: released 1');
    my ($st) = $c->read_response(5);
    is($st, 200, '/api/x answered 200 after the resume');
    $c->close;
    is(at_backend('/api/x'), 1, '... reaching the backend once');
    is(result('/api/x'), 'released', '... $intermission_result=released');
}

# ---- legacy paused: try_files into @tnamed holds the request there
{
    is(scalar ctl('POST', 'pause', 'scope=legacy'), 200, 'legacy paused again');
    my $c = http_connect($port);
    $c->send_request(path => '/t/y', keepalive => 0);
    ok(wait_for(sub { (held_of('legacy') // 0) == 1 }, 3),
       'try_files -> @tnamed: /t/y is held in scope legacy (legacy held 1)');
    is(held_of('tscope'), 0, '... not in tscope (tscope held 0)');
    ok(none_readable(0.5, $c), '... not answered while legacy is paused');
    is(at_backend('/t/y'), 0, '... nothing reached the backend while held');
    my (undef, undef, $j) = ctl('POST', 'resume', 'scope=legacy');
    is($j && $j->{scopes}[0]{released}, 1, 'resume legacy: released 1');
    my ($st) = $c->read_response(5);
    is($st, 200, '/t/y answered 200 after the resume');
    $c->close;
    is(at_backend('/t/y'), 1, '... reaching the backend once');
    is(result('/t/y'), 'released', '... $intermission_result=released');
}

# ---- in flight follows the request into @legacy
{
    my $path = '/api/slow?sleep=6000';
    my $c = http_connect($port);
    $c->send_request(path => $path, keepalive => 0);
    ok(wait_for(sub { at_backend($path) }, 5), 'nothing paused: the slow request reached the backend through @legacy');
    my $t_start = time;
    ok(wait_for(sub { (inflight_of('legacy') // 0) == 1 }, 2), 'it is in flight in legacy (legacy inflight 1)')
        or diag('legacy inflight=' . (inflight_of('legacy') // 'undef'));
    is(inflight_of('api'), 0, '... not in api (api inflight 0)');
    my $t0 = time;
    my ($st, undef, $j) = ctl('GET', 'drain', 'scope=api&timeout=2s');
    is($st, 200, 'drain?scope=api answers 200 (nothing of api in flight)');
    cmp_ok(time - $t0, '<', 1, '... at once');
    ($st, undef, $j) = ctl('GET', 'drain', 'scope=legacy&timeout=500ms');
    is($st, 503, 'drain?scope=legacy&timeout=500ms answers 503 while it runs');
    is($j && $j->{inflight}, 1, '... with inflight 1');
    my $d = ctl_send('GET', 'drain', 'scope=legacy&timeout=10s');
    my @r = read_responses(10, $c, $d);
    is($r[0] && $r[0][0], 200, 'the slow request answered 200');
    is($r[1] && $r[1][0], 200, 'drain?scope=legacy answers 200 once it ended');
    ok($r[0] && $r[1] && $r[1][3] >= $r[0][3] - 0.05, '... after it ended, not before');
    $c->close;
    $d->close;
}

# ---- api paused: the request is held in api before its 502, then goes on to @legacy
{
    is(scalar ctl('POST', 'pause', 'scope=api'), 200, 'api paused (legacy running)');
    my $refused0 = refused('/api/z');
    my $c = http_connect($port);
    $c->send_request(path => '/api/z', keepalive => 0);
    ok(wait_for(sub { (held_of('api') // 0) == 1 }, 3), '/api/z is held in scope api (api held 1)');
    is(held_of('legacy'), 0, '... legacy held 0');
    ok(none_readable(0.3, $c), '... not answered while api is paused');
    is(refused('/api/z') - $refused0, 0, '... it never tried the closed port while held');
    is(at_backend('/api/z'), 0, '... nothing at the backend');
    my (undef, undef, $j) = ctl('POST', 'resume', 'scope=api');
    is($j && $j->{scopes}[0]{released}, 1, 'resume api: released 1');
    my ($st) = $c->read_response(5);
    is($st, 200, 'after the resume: 502 from the closed port, then @legacy answers 200');
    $c->close;
    ok(wait_for(sub { refused('/api/z') - $refused0 >= 1 }, 2), '... it tried the closed port after the resume');
    is(at_backend('/api/z'), 1, '... reaching the backend once');
    note('/api/z: $intermission_result=' . (result('/api/z') // 'undef'));
}

finish();
