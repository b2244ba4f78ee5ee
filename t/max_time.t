#!/usr/bin/perl
# max_time.t: `intermission_max_time` and `intermission_on_timeout`.
# http{} sets intermission_max_time 500ms; /pass/ inherits it with the default
# on_timeout (pass), /rej/ (scope rej) sets on_timeout reject, /long/ (scope long)
# overrides max_time 10s; a second server sets max_time 300ms + reject at server level.
# - status counters have timed_out and rejected (0 at start).
# - pass: a request held while paused reaches the backend after about 0.5 s (not before
#   0.4 s) while the scope stays paused and is answered 200; counters.timed_out=1,
#   rejected=0, held=0. Two requests held 250 ms apart each time out on their own clock.
# - reject: answered 503 with a Retry-After header after about 0.5 s, never reaches the
#   backend; counters.timed_out=1 and rejected=1; the scope stays paused.
# - server-level settings are inherited by the location (503 after about 0.3 s).
# - /long/: still held after 0.8 s (the location's 10s wins over http's 500ms); a resume
#   releases it normally (timed_out stays 0).
# - max_time limits holding only: not paused, a 800 ms backend request is answered 200.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
http {
    intermission_max_time 500ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /pass/ {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /rej/ {
            intermission rej;
            intermission_on_timeout reject;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /long/ {
            intermission long;
            intermission_max_time 10s;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    server {
        listen 127.0.0.1:%%SRV2_PORT%%;
        intermission_max_time 300ms;
        intermission_on_timeout reject;
        location / {
            intermission srv;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');

for my $sc (qw(default rej long srv)) {
    my $c = scope_counters($sc);
    is($c->{timed_out}, 0, "$sc: counters.timed_out=0 at start");
    is($c->{rejected}, 0, "$sc: counters.rejected=0 at start");
}

is(scalar ctl('POST', 'enable'), 200, 'all scopes paused');

# ---- pass
{
    my $t0 = time;
    my $c = http_connect($port);
    $c->send_request(path => '/pass/1', keepalive => 0);
    ok(wait_held('default', 1), 'request held');
    my @r = read_responses(5, $c);
    is($r[0] && $r[0][0], 200, 'held request answered 200 after max_time (pass)');
    is($r[0] && $r[0][2], 'ok /pass/1', '... by the backend');
    my $el = $r[0] ? $r[0][3] - $t0 : -1;
    cmp_ok($el, '>=', 0.4, '... not before max_time');
    cmp_ok($el, '<', 3, '... soon after max_time');
    my ($log) = grep { $_->{uri} eq '/pass/1' } backend_log();
    ok($log && $log->{time} >= $t0 + 0.4, 'backend got it after max_time');
    my $s = scope_status('default');
    ok($s && $s->{paused}, 'scope still paused');
    is($s && $s->{held}, 0, 'held=0');
    is($s && $s->{counters}{timed_out}, 1, 'counters.timed_out=1');
    is($s && $s->{counters}{rejected}, 0, 'counters.rejected=0');
    $c->close;

    # two requests, 250 ms apart, each on its own clock
    my $a = http_connect($port);
    my $ta = time;
    $a->send_request(path => '/pass/2', keepalive => 0);
    sleep 0.25;
    my $b = http_connect($port);
    my $tb = time;
    $b->send_request(path => '/pass/3', keepalive => 0);
    @r = read_responses(5, $a, $b);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'both answered 200');
    ok($r[0] && $r[0][3] - $ta >= 0.4, 'first not before its max_time');
    ok($r[1] && $r[1][3] - $tb >= 0.4, 'second not before its own max_time');
    ok($r[0] && $r[1] && $r[0][3] <= $r[1][3] + 0.05, 'first answered before the second');
    is(scope_counters('default')->{timed_out}, 3, 'counters.timed_out=3');
    $_->close for $a, $b;
}

# ---- reject
{
    my $t0 = time;
    my $c = http_connect($port);
    $c->send_request(path => '/rej/1', keepalive => 0);
    ok(wait_held('rej', 1), 'request held');
    my @r = read_responses(5, $c);
    is($r[0] && $r[0][0], 503, 'held request answered 503 after max_time (reject)');
    ok($r[0] && defined $r[0][1]{'retry-after'} && length $r[0][1]{'retry-after'}, '503 has Retry-After')
        or diag explain($r[0] && $r[0][1]);
    like($r[0] ? $r[0][1]{'retry-after'} // '' : '', qr/^\d+$/, 'Retry-After is a number of seconds');
    my $el = $r[0] ? $r[0][3] - $t0 : -1;
    cmp_ok($el, '>=', 0.4, '... not before max_time');
    cmp_ok($el, '<', 3, '... soon after max_time');
    sleep 0.3;
    is(scalar(grep { $_->{uri} =~ m{^/rej/} } backend_log()), 0, 'rejected request never reached the backend');
    my $s = scope_status('rej');
    ok($s && $s->{paused}, 'scope rej still paused');
    is($s && $s->{held}, 0, 'held=0');
    is($s && $s->{counters}{timed_out}, 1, 'counters.timed_out=1');
    is($s && $s->{counters}{rejected}, 1, 'counters.rejected=1');
    is(scope_counters('default')->{rejected}, 0, 'default: counters.rejected still 0');
    $c->close;
}

# ---- server-level settings
{
    my $t0 = time;
    my $c = http_connect(port('SRV2_PORT'));
    $c->send_request(path => '/srv/1', keepalive => 0);
    my @r = read_responses(5, $c);
    is($r[0] && $r[0][0], 503, 'server-level max_time + reject: 503');
    ok($r[0] && defined $r[0][1]{'retry-after'}, '... with Retry-After');
    my $el = $r[0] ? $r[0][3] - $t0 : -1;
    cmp_ok($el, '>=', 0.25, '... not before 300 ms');
    cmp_ok($el, '<', 3, '... soon after');
    my $s = scope_status('srv');
    is($s && $s->{counters}{timed_out}, 1, 'srv: timed_out=1');
    is($s && $s->{counters}{rejected}, 1, 'srv: rejected=1');
    $c->close;
}

# ---- location override: 10s
{
    my $c = http_connect($port);
    $c->send_request(path => '/long/1', keepalive => 0);
    ok(wait_held('long', 1), 'request held');
    ok(!$c->readable(0.8), 'still held after 0.8 s (location max_time 10s)');
    my (undef, undef, $j) = ctl('POST', 'disable', 'scope=long');
    is($j && $j->{scopes}[0]{released}, 1, 'resume released=1');
    my ($st) = $c->read_response(5);
    is($st, 200, 'released request answered 200');
    my $s = scope_status('long');
    is($s && $s->{counters}{timed_out}, 0, 'long: timed_out=0');
    is($s && $s->{counters}{released}, 1, 'long: released=1');
    $c->close;
}

is(scalar ctl('POST', 'disable'), 200, 'all resumed');

# ---- not paused: max_time does not limit a request in flight
{
    my ($st, undef, $body) = http_get($port, '/pass/slow?sleep=800');
    is($st, 200, 'not paused: an 800 ms request is answered 200');
    ($st) = http_get($port, '/rej/slow?sleep=800');
    is($st, 200, 'not paused: an 800 ms request in the reject scope is answered 200');
    is(scope_counters('default')->{timed_out}, 3, 'default: timed_out unchanged');
    is(scope_counters('rej')->{rejected}, 1, 'rej: rejected unchanged');
}

finish();
