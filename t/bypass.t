#!/usr/bin/perl
# bypass.t: `intermission_bypass <string> ...;` (like proxy_no_cache: the request passes
# even while paused if any value is non-empty and not "0").
# Location / has `intermission_bypass $bypass $bypass_geo;` with
#   map $http_x_monitor $bypass { default 0; "yes" 1; }
#   geo $bypass_geo { default 0; 127.0.0.2 1; }
# and /arg/ (scope argscope) has `intermission_bypass $arg_bypass;`.
# While paused:
# - X-Monitor: yes -> answered 200 at once, reaches the backend, $intermission_result
#   "bypass" and $intermission_held_ms 0 in the access log; a bypassed slow request is in
#   flight (status inflight=1) and is not counted as held.
# - a client connecting from 127.0.0.2 (geo) -> passes the same way.
# - no header, X-Monitor: no, from 127.0.0.1 -> held; ?bypass=1 and ?bypass=abc pass,
#   ?bypass=0, ?bypass= and no argument are held.
# - counters.held counts only the held ones; resume releases them ($intermission_result
#   "released").
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
http {
    log_format vars '$request_uri|$intermission_result|$intermission_held_ms|$status';
    map $http_x_monitor $bypass {
        default 0;
        "yes"   1;
    }
    geo $bypass_geo {
        default   0;
        127.0.0.2 1;
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%PREFIX%%/vars.log vars;
        location / {
            intermission on;
            intermission_bypass $bypass $bypass_geo;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /arg/ {
            intermission argscope;
            intermission_bypass $arg_bypass;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');

sub seen { my ($uri) = @_; scalar grep { $_->{uri} eq $uri } backend_log() }

sub log_entry {
    my ($uri) = @_;
    my $line;
    wait_for(sub { ($line) = grep { (split /\|/)[0] eq $uri } file_lines('vars.log'); $line });
    return $line ? [split /\|/, $line, -1] : undef;
}

is(scalar ctl('POST', 'enable'), 200, 'all scopes paused');

# requests that must be held
my %held;
$held{'/h/plain'}   = [];
$held{'/h/no'}      = ['X-Monitor' => 'no'];
$held{'/h/empty'}   = ['X-Monitor' => ''];
my @hc;
for my $p (sort keys %held) {
    my $c = http_connect($port);
    $c->send_request(path => $p, headers => $held{$p}, keepalive => 0);
    push @hc, $c;
}
ok(wait_held('default', 3), 'requests without a bypass value are held');

my @arg_held = ('/arg/zero?bypass=0', '/arg/empty?bypass=', '/arg/none');
my @ac;
for my $p (@arg_held) {
    my $c = http_connect($port);
    $c->send_request(path => $p, keepalive => 0);
    push @ac, $c;
}
ok(wait_held('argscope', 3), '?bypass=0, ?bypass= and no argument are held');

# bypass by header (map)
{
    my $t0 = time;
    my ($st, undef, $body) = http_get($port, '/m/1', headers => ['X-Monitor' => 'yes']);
    is($st, 200, 'X-Monitor: yes passes while paused');
    is($body, 'ok /m/1', '... answered by the backend');
    cmp_ok(time - $t0, '<', 2, '... at once');
    is(seen('/m/1'), 1, 'backend saw it');
    my $e = log_entry('/m/1');
    is($e && $e->[1], 'bypass', '$intermission_result=bypass');
    is($e && $e->[2], '0', '$intermission_held_ms=0');
}

# bypass by client address (geo)
{
    my ($st, undef, $body) = http_get($port, '/g/1', local_addr => '127.0.0.2');
    is($st, 200, 'a client from 127.0.0.2 passes while paused');
    is($body, 'ok /g/1', '... answered by the backend');
    my $e = log_entry('/g/1');
    is($e && $e->[1], 'bypass', '$intermission_result=bypass');

    my $c = http_connect($port, local_addr => '127.0.0.3');
    $c->send_request(path => '/g/other', keepalive => 0);
    ok(wait_held('default', 4), 'a client from 127.0.0.3 is held');
    push @hc, $c;
}

# bypass by argument
for my $p ('/arg/one?bypass=1', '/arg/word?bypass=abc') {
    my ($st) = http_get($port, $p);
    is($st, 200, "$p passes while paused");
    is(seen($p), 1, "$p reached the backend");
    my $e = log_entry($p);
    is($e && $e->[1], 'bypass', "$p: \$intermission_result=bypass");
}

# a bypassed request is in flight, not held
{
    my $c = http_connect($port);
    $c->send_request(path => '/m/slow?sleep=1000', headers => ['X-Monitor' => 'yes'], keepalive => 0);
    ok(wait_for(sub { seen('/m/slow?sleep=1000') }), 'bypassed slow request reached the backend while paused');
    ok(wait_inflight('default', 1), 'status: inflight=1 while paused');
    is((scope_status('default') || {})->{held}, 4, 'status: held still 4');
    my ($st) = $c->read_response(5);
    is($st, 200, 'bypassed slow request answered');
    $c->close;
}

ok(none_readable(0.1, @hc, @ac), 'the held requests are still held');
is(scalar(grep { $_->{uri} =~ m{^/h/|^/g/other|^/arg/(zero|empty|none)} } backend_log()), 0,
   'backend saw none of the held requests');
my $s = scope_status('default');
is($s && $s->{counters}{held}, 4, 'default: counters.held=4 (bypassed requests not counted)');
$s = scope_status('argscope');
is($s && $s->{counters}{held}, 3, 'argscope: counters.held=3');

my (undef, undef, $j) = ctl('POST', 'disable');
my %rel = map { $_->{name} => $_->{released} } @{ ($j && $j->{scopes}) || [] };
is($rel{default}, 4, 'resume released 4 in default');
is($rel{argscope}, 3, 'resume released 3 in argscope');
my @r = read_responses(5, @hc, @ac);
is(scalar(grep { $_ && $_->[0] == 200 } @r), 7, 'all held requests answered 200 after the resume');
my $e = log_entry('/h/plain');
is($e && $e->[1], 'released', 'a held request: $intermission_result=released');
$e = log_entry('/arg/zero?bypass=0');
is($e && $e->[1], 'released', '?bypass=0: $intermission_result=released');
$_->close for @hc, @ac;

finish();
