#!/usr/bin/perl
# variables.t: $intermission_result, $intermission_held_ms and $intermission_paused,
# read from an access log with a custom log_format (written when each request ends):
# - pass (not paused): result "pass", held_ms 0, paused 0.
# - released (held ~0.5 s, then resumed): result "released", held_ms >= 450 and not more
#   than the client saw.
# - aborted (client left while held): result "aborted", status 499.
# - timeout (max_time 400ms, on_timeout pass): result "timeout", held_ms >= 350, 200.
# - rejected by on_timeout reject: result "rejected", held_ms >= 350, 503.
# - rejected by max_held 1: result "rejected", held_ms 0, 503, paused 1.
# - bypass while paused: result "bypass", held_ms 0, paused 1.
# - a location without intermission: result empty ("" or "-" in the log).
# - $intermission_paused in the rewrite phase (before any hold): `return 200
#   "$intermission_paused"` answers 0/1 per the location's scope; a health check
#   `if ($intermission_paused) { return 503; } return 200;` answers 503 while paused.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
http {
    log_format vars '$request_uri|$intermission_result|$intermission_held_ms|$intermission_paused|$status';
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%PREFIX%%/vars.log vars;
        location /a/ {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /t/ {
            intermission tscope;
            intermission_max_time 400ms;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /r/ {
            intermission rscope;
            intermission_max_time 400ms;
            intermission_on_timeout reject;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /m/ {
            intermission mscope;
            intermission_max_held 1;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /b/ {
            intermission on;
            intermission_bypass $http_x_bypass;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /none/ {
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location = /lb-health {
            intermission on;
            if ($intermission_paused) {
                return 503;
            }
            return 200 "up";
        }
        location = /flag {
            intermission on;
            return 200 "$intermission_paused";
        }
        location = /flag-other {
            intermission other;
            return 200 "$intermission_paused";
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');

# log_entry($uri) -> { result, held_ms, paused, status } of the access-log line for $uri
sub log_entry {
    my ($uri) = @_;
    my $line;
    wait_for(sub { ($line) = grep { (split /\|/)[0] eq $uri } file_lines('vars.log'); $line });
    diag("no access log line for $uri") unless $line;
    return {} unless $line;
    my (undef, $result, $held_ms, $paused, $status) = split /\|/, $line, -1;
    return { result => $result, held_ms => $held_ms, paused => $paused, status => $status, line => $line };
}

sub body_of { my ($path) = @_; my ($st, undef, $b) = http_get($port, $path); return ($st // 0) . ":" . ($b // '') }

# ---- not paused
{
    my ($st) = http_get($port, '/a/pass');
    is($st, 200, 'not paused: /a/pass answered');
    my $e = log_entry('/a/pass');
    is($e->{result}, 'pass', 'pass: $intermission_result=pass');
    is($e->{held_ms}, '0', 'pass: $intermission_held_ms=0');
    is($e->{paused}, '0', 'pass: $intermission_paused=0');

    ($st) = http_get($port, '/none/x');
    is($st, 200, '/none/x answered');
    $e = log_entry('/none/x');
    like($e->{result} // 'undef', qr/^-?$/, 'no intermission location: $intermission_result empty')
        or diag($e->{line});

    is(body_of('/flag'), '200:0', '$intermission_paused=0 in the rewrite phase when not paused');
    is(body_of('/flag-other'), '200:0', 'other scope: 0');
    is(body_of('/lb-health'), '200:up', 'health check: 200 when not paused');
}

is(scalar ctl('POST', 'enable'), 200, 'all scopes paused');

# ---- paused flags
{
    is(body_of('/flag'), '200:1', '$intermission_paused=1 while paused (answered in rewrite phase)');
    is(body_of('/flag-other'), '200:1', 'other scope: 1 while paused');
    my ($hst) = http_get($port, '/lb-health');
    is($hst, 503, 'health check: 503 while paused');
    is(scalar ctl('POST', 'disable', 'scope=other'), 200, 'other resumed');
    is(body_of('/flag-other'), '200:0', 'other scope: 0 after its resume');
    is(body_of('/flag'), '200:1', 'default scope: still 1');
}

# ---- bypass
{
    my ($st) = http_get($port, '/b/1', headers => ['X-Bypass' => '1']);
    is($st, 200, 'bypass request answered while paused');
    my $e = log_entry('/b/1');
    is($e->{result}, 'bypass', 'bypass: $intermission_result=bypass');
    is($e->{held_ms}, '0', 'bypass: $intermission_held_ms=0');
    is($e->{paused}, '1', 'bypass: $intermission_paused=1 (scope paused)');
}

# ---- rejected by max_held
{
    my $h = http_connect($port);
    $h->send_request(path => '/m/1', keepalive => 0);
    ok(wait_held('mscope', 1), 'mscope: one held');
    my ($st) = http_get($port, '/m/2');
    is($st, 503, 'mscope: second request rejected');
    my $e = log_entry('/m/2');
    is($e->{result}, 'rejected', 'max_held: $intermission_result=rejected');
    is($e->{held_ms}, '0', 'max_held: $intermission_held_ms=0');
    is($e->{status}, '503', 'max_held: status 503');
    is($e->{paused}, '1', 'max_held: $intermission_paused=1');
    is(scalar ctl('POST', 'disable', 'scope=mscope'), 200, 'mscope resumed');
    ($st) = $h->read_response(5);
    is($st, 200, 'mscope: held request answered');
    $h->close;
}

# ---- released
{
    my $t0 = time;
    my $c = http_connect($port);
    $c->send_request(path => '/a/rel', keepalive => 0);
    ok(wait_held('default', 1), 'request held');
    sleep 0.5;
    is(scalar ctl('POST', 'disable', 'scope=default'), 200, 'default resumed');
    my @r = read_responses(5, $c);
    is($r[0] && $r[0][0], 200, 'released request answered');
    my $e = log_entry('/a/rel');
    is($e->{result}, 'released', 'released: $intermission_result=released');
    cmp_ok($e->{held_ms} // -1, '>=', 450, 'released: $intermission_held_ms >= the hold time');
    cmp_ok($e->{held_ms} // 1e9, '<=', ($r[0] ? $r[0][3] - $t0 : 5) * 1000 + 50,
           'released: $intermission_held_ms not more than the client waited');
    $c->close;
}

# ---- aborted
{
    is(scalar ctl('POST', 'enable', 'scope=default'), 200, 'default paused again');
    my $c = http_connect($port);
    $c->send_request(path => '/a/abort', keepalive => 0);
    ok(wait_held('default', 1), 'request held');
    sleep 0.2;
    $c->close;
    ok(wait_for(sub { my $s = scope_status('default'); $s && $s->{held} == 0 }), 'held=0 after the client left');
    my $e = log_entry('/a/abort');
    is($e->{result}, 'aborted', 'aborted: $intermission_result=aborted');
    is($e->{status}, '499', 'aborted: status 499');
    cmp_ok($e->{held_ms} // -1, '>=', 150, 'aborted: $intermission_held_ms about the hold time');
}

# ---- timeout (pass)
{
    my ($st) = http_get($port, '/t/1');
    is($st, 200, 'max_time pass: answered 200');
    my $e = log_entry('/t/1');
    is($e->{result}, 'timeout', 'max_time pass: $intermission_result=timeout');
    cmp_ok($e->{held_ms} // -1, '>=', 350, 'max_time pass: $intermission_held_ms about max_time');
    cmp_ok($e->{held_ms} // 1e9, '<', 3000, 'max_time pass: $intermission_held_ms not far beyond it');
    is($e->{status}, '200', 'max_time pass: status 200');
}

# ---- rejected by on_timeout reject
{
    my ($st) = http_get($port, '/r/1');
    is($st, 503, 'max_time reject: 503');
    my $e = log_entry('/r/1');
    is($e->{result}, 'rejected', 'max_time reject: $intermission_result=rejected');
    cmp_ok($e->{held_ms} // -1, '>=', 350, 'max_time reject: $intermission_held_ms about max_time');
    is($e->{status}, '503', 'max_time reject: status 503');
}

is(scalar ctl('POST', 'disable'), 200, 'all resumed');
{
    my ($st) = http_get($port, '/a/pass2');
    is($st, 200, 'after the resume: answered');
    my $e = log_entry('/a/pass2');
    is($e->{result}, 'pass', 'after the resume: pass');
    is($e->{paused}, '0', 'after the resume: $intermission_paused=0');
    is(body_of('/lb-health'), '200:up', 'health check: 200 again');
}

finish();
