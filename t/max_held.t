#!/usr/bin/perl
# max_held.t: `intermission_max_held`, counted over all workers of the instance.
# Part 1: 2 workers (reuseport), intermission_max_held 3 at http level; the control
# location sits in the same server, which has `intermission on`.
# - Not paused: 5 concurrent slow requests all pass (the limit is about held requests).
# - Paused: 3 requests held; the 4th and 5th get 503 with Retry-After at once (well
#   before the 5 s wait), never reach the backend; counters.rejected=2, counters.held=3,
#   held=3; the control endpoint still answers. A held client that leaves frees a place:
#   the next request is held, not rejected. Scope beta (max_held 3 of its own) still
#   holds while default is full. Resume releases the held ones: answered 200.
# Part 2: the default limit is each worker's connection budget, times the workers: of
# worker_connections, less the listening sockets and 2 (its channel, the module's eventfd),
# a sixteenth is left for other requests, and of the rest the release window's upstream
# connections (32 by default): worker_processes 1, worker_connections 100, 2 listening
# sockets -> 96, 90, 58 held; the 59th gets 503 with Retry-After at once, and an [error]
# line says which cap and what to raise, once (a 60th does not repeat it). A static file
# location, so that the released requests need no upstream connections.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
worker_processes 2;
http {
    intermission_max_held 3;
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        listen 127.0.0.1:%%CTL_PORT%% reuseport;
        intermission on;
        location / {
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /beta/ {
            intermission beta;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /ctl/ {
            intermission_control;
        }
    }
}
CONF

my $port = port('PORT');

sub send_one {
    my ($path) = @_;
    my $c = http_connect($port);
    $c->send_request(path => $path, keepalive => 0);
    return $c;
}

# ---- not paused: no limit on requests in flight
{
    my @c = map { send_one("/free/$_?sleep=300") } 1 .. 5;
    my @r = read_responses(5, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 5, 'not paused: 5 concurrent requests all answered 200');
    $_->close for @c;
}

is(scalar ctl('POST', 'enable'), 200, 'paused');

my @held;
for my $i (1 .. 3) {
    push @held, send_one("/held/$i");
    ok(wait_held('default', $i), "request $i held");
}

for my $i (4, 5) {
    my $t0 = time;
    my $c = send_one("/over/$i");
    my @r = read_responses(5, $c);
    is($r[0] && $r[0][0], 503, "request $i over max_held: 503");
    ok($r[0] && defined $r[0][1]{'retry-after'} && length $r[0][1]{'retry-after'}, "request $i: Retry-After");
    ok($r[0] && $r[0][3] - $t0 < 2, "request $i answered at once");
    $c->close;
}

my ($st, undef, $j) = ctl('GET', 'status');
is($st, 200, 'control endpoint answers while the scope is full');
my $s = scope_status('default');
is($s && $s->{held}, 3, 'held=3');
is($s && $s->{counters}{rejected}, 2, 'counters.rejected=2');
is($s && $s->{counters}{held}, 3, 'counters.held=3 (rejected requests were never held)');
ok(none_readable(0.1, @held), 'the three held requests still held');
sleep 0.2;
is(scalar(grep { $_->{uri} =~ m{^/(held|over)/} } backend_log()), 0, 'backend saw none of them');

# another scope has its own count
{
    my @b = map { send_one("/beta/$_") } 1 .. 2;
    ok(wait_held('beta', 2), 'beta holds 2 while default is full');
    ok(none_readable(0.2, @b), 'beta requests held, not rejected');
    push @held, @b;
}

# a client that leaves frees its place
{
    my $gone = shift @held;
    $gone->close;
    ok(wait_held('default', 2), 'held=2 after a client left');
    my $c = send_one('/held/4');
    ok(wait_held('default', 3), 'the next request is held again');
    ok(!$c->readable(0.3), '... not rejected');
    push @held, $c;
    $s = scope_status('default');
    is($s && $s->{counters}{rejected}, 2, 'counters.rejected still 2');
    is($s && $s->{counters}{aborted}, 1, 'counters.aborted=1');
}

(undef, undef, $j) = ctl('POST', 'disable');
my %rel = map { $_->{name} => $_->{released} } @{ ($j && $j->{scopes}) || [] };
is($rel{default}, 3, 'resume released 3 in default');
is($rel{beta}, 2, 'resume released 2 in beta');
my @r = read_responses(5, @held);
is(scalar(grep { $_ && $_->[0] == 200 } @r), 5, 'all held requests answered 200');
is(scalar(grep { $_->{uri} =~ m{^/over/} } backend_log()), 0, 'rejected requests never reached the backend');
$_->close for @held;

($st) = http_get($port, '/after');
is($st, 200, 'not paused: requests pass');

stop_nginx();

# ---- part 2: the default limit
start_nginx(<<'CONF');
worker_processes 1;
events { worker_connections 100; }
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            root %%PREFIX%%/html;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

write_file('html/dflt/index.html', 'static');
is(scalar ctl('POST', 'enable'), 200, 'default limit: paused');
my @c;
for my $i (1 .. 58) {
    push @c, send_one("/dflt/index.html?i=$i");
}
ok(wait_held('default', 58), 'default limit: 58 held (100 - 2 listening - 2 = 96, less 6, less a window of 32)');
for my $i (59, 60) {
    my $t0 = time;
    my $c = send_one("/dflt/index.html?i=$i");
    my @r = read_responses(5, $c);
    is($r[0] && $r[0][0], 503, "default limit: the ${i}th gets 503");
    ok($r[0] && defined $r[0][1]{'retry-after'}, '... with Retry-After');
    ok($r[0] && $r[0][3] - $t0 < 2, '... at once');
    $c->close;
}
is(scalar(error_log_lines(qr/scope "default": a request answered 503: this worker holds 58 requests, as many as its worker_connections leave room for .*raise worker_connections/)),
   1, 'default limit: said once, with what to raise');
is(scalar ctl('POST', 'disable'), 200, 'resumed');
@r = read_responses(5, @c);
is(scalar(grep { $_ && $_->[0] == 200 && $_->[2] eq 'static' } @r), 58, 'the 58 held answered 200');
$_->close for @c;

finish();
