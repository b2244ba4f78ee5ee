#!/usr/bin/perl
# failure_hold_after_send.t: failures after the request reached the backend, under
# `intermission_on_failure hold`, and the 502/503/504 answers that are not failures it holds.
# One backend; its `?reset=1` resets the connection after reading the request, answering
# nothing; `?status=N` answers N; `&once=ID` makes either apply the first time only.
# (1) Plain `hold`: a POST and a GET whose connection is reset after they were sent are
#     not sent again: 502 at once, each reached the backend once, failed 0, held 0.
# (2) `hold idempotent`: a GET and a PUT (with a body) reset once are held and sent again:
#     200, each reached the backend twice, the PUT's body whole both times (md5); the scope
#     never went down (a request's trouble is not the backend's absence). A POST reset once
#     is not sent again: 502, at the backend once. retried 2.
# (3) `hold http_503` with proxy_intercept_errors on: a URL the backend answers 503 once is
#     held and then answered 200 (at the backend twice). A URL it always answers 503 is
#     held until its deadline (intermission_max_time 2s) and then answered 503, and
#     meanwhile other URLs of the scope are answered 200 at once: the scope is not down
#     (status down false, went_down 0), whatever the trials of the 503 URL got.
# (4) 503s not from the backend in an `http_503` location keep nginx's answer: limit_req's
#     503 at once, never at the backend; this module's cap (max_held 1 while paused): 503
#     with Retry-After at once, never at the backend.
# (5) `http_503` without proxy_intercept_errors: the backend's 503 reaches the client at
#     once, and an [error] line says that the location needs proxy_intercept_errors on.
# (6) A connect timeout (a listening socket whose backlog is full, proxy_connect_timeout
#     300ms) is held like a refused connection, not answered 504; once a real backend
#     listens on the port, it is answered 200 and reached the backend once.
use strict;
use warnings;
use Test::More;
use Digest::MD5 qw(md5_hex);
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $CT_PORT = free_port();
set_var(CT_PORT => $CT_PORT);

start_nginx(<<'CONF');
http {
    limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /plain/ {
            intermission plain;
            intermission_on_failure hold interval=300ms;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /idem/ {
            intermission idem;
            intermission_on_failure hold idempotent interval=300ms;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /b503/ {
            intermission b503;
            intermission_on_failure hold http_503 interval=300ms;
            intermission_max_time 2s;
            proxy_intercept_errors on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /lr/ {
            intermission lr;
            intermission_on_failure hold http_503;
            proxy_intercept_errors on;
            limit_req zone=one nodelay;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /cap/ {
            intermission cap;
            intermission_max_held 1;
            intermission_on_failure hold http_503;
            proxy_intercept_errors on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /nointercept/ {
            intermission ni;
            intermission_on_failure hold http_503;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /ct/ {
            intermission ct;
            intermission_on_failure hold interval=300ms;
            proxy_connect_timeout 300ms;
            proxy_pass http://127.0.0.1:%%CT_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF
my $port = port('PORT');

sub at_backend { my ($uri) = @_; scalar grep { $_->{uri} eq $uri } backend_log() }
sub bodies_at_backend { my ($uri) = @_; map { $_->{md5} } grep { $_->{uri} eq $uri } backend_log() }

# ---- (1) plain hold: not sent again after the backend took it
{
    my $t0 = time;
    my ($st) = http_post($port, '/plain/p?reset=1', 'id=1');
    is($st, 502, '(1) POST reset after it was sent: 502');
    ($st) = http_get($port, '/plain/g?reset=1');
    is($st, 502, '(1) GET reset after it was sent: 502 without idempotent');
    cmp_ok(time - $t0, '<', 1, '(1) both at once');
    is(at_backend('/plain/p?reset=1'), 1, '(1) the POST reached the backend once');
    is(at_backend('/plain/g?reset=1'), 1, '(1) the GET reached the backend once');
    my $c = scope_counters('plain');
    is($c->{failed}, 0, '(1) nothing counted failed');
    is(scope_status('plain')->{held}, 0, '(1) nothing held');
}

# ---- (2) idempotent: GET and PUT sent again, POST not
{
    my ($st, undef, $body) = http_get($port, '/idem/g?reset=1&once=g2');
    is($st, 200, '(2) GET reset once: 200') or diag($body);
    is(at_backend('/idem/g?reset=1&once=g2'), 2, '(2) the GET reached the backend twice');
    my $put = 'x' x 5000 . 'put-body';
    ($st) = http_request($port, method => 'PUT', path => '/idem/u?reset=1&once=u2', body => $put);
    is($st, 200, '(2) PUT reset once: 200');
    my @md5 = bodies_at_backend('/idem/u?reset=1&once=u2');
    is_deeply(\@md5, [md5_hex($put), md5_hex($put)], '(2) the PUT reached the backend twice, its body whole');
    ($st) = http_post($port, '/idem/p?reset=1&once=p2', 'id=2');
    is($st, 502, '(2) POST reset once: 502, not sent again');
    is(at_backend('/idem/p?reset=1&once=p2'), 1, '(2) the POST reached the backend once');
    my $c = scope_counters('idem');
    is($c->{retried}, 2, '(2) retried 2');
    is($c->{went_down}, 0, '(2) the scope never went down');
    ok(!scope_status('idem')->{down}, '(2) not down');
}

# ---- (3) http_503: held, and only the request that got it
{
    my ($st) = http_get($port, '/b503/once?status=503&once=b1');
    is($st, 200, '(3) a 503 once: held, then 200');
    is(at_backend('/b503/once?status=503&once=b1'), 2, '(3) it reached the backend twice');
    my $t0 = time;
    my $held = send_only($port, '/b503/always?status=503');
    sleep 0.2;
    my @others;
    for my $i (1 .. 5) {
        my $t = time;
        my ($s) = http_get($port, "/b503/ok$i");
        push @others, [$s, time - $t];
        sleep 0.2;
    }
    is_deeply([map { $_->[0] } @others], [(200) x 5], '(3) the other URLs: 200 meanwhile');
    ok(!grep({ $_->[1] > 0.5 } @others), '(3) ... each at once')
        or diag(join(' ', map { sprintf '%.3f', $_->[1] } @others));
    ok(!scope_status('b503')->{down}, '(3) the scope is not down');
    my ($r) = read_responses(5, $held);
    is($r && $r->[0], 503, '(3) the URL that always answers 503: 503 at its deadline');
    my $after = ($r ? $r->[3] : time) - $t0;
    cmp_ok($after, '>=', 1.5, sprintf('(3) ... not before (%.2f s)', $after));
    cmp_ok(at_backend('/b503/always?status=503'), '>=', 2, '(3) it was tried again while held');
    my $c = scope_counters('b503');
    is($c->{went_down}, 0, '(3) went_down 0');
    cmp_ok($c->{gave_up}, '>=', 1, '(3) gave_up counts it');
}

# ---- (4) 503s that are not the backend's
{
    my ($st) = http_get($port, '/lr/a');
    is($st, 200, '(4) limit_req: the first request passes');
    my $t0 = time;
    ($st) = http_get($port, '/lr/b');
    is($st, 503, "(4) limit_req's 503: answered");
    cmp_ok(time - $t0, '<', 1, '(4) ... at once');
    is(at_backend('/lr/b'), 0, '(4) ... never at the backend');

    ctl('POST', 'enable', { scope => 'cap' });
    my $h1 = send_only($port, '/cap/1');
    ok(wait_for(sub { (scope_status('cap') // {})->{held} == 1 }), '(4) one held by the pause');
    my ($s, $hd) = http_get($port, '/cap/2');
    is($s, 503, '(4) over intermission_max_held: 503');
    ok($hd && $hd->{'retry-after'}, '(4) ... with Retry-After');
    is(at_backend('/cap/2'), 0, '(4) ... never at the backend');
    ctl('POST', 'disable', { scope => 'cap' });
    my ($r) = read_responses(5, $h1);
    is($r && $r->[0], 200, '(4) the held one: 200 after the resume');
}

# ---- (5) http_503 without proxy_intercept_errors: said
{
    my ($st) = http_get($port, '/nointercept/x?status=503');
    is($st, 503, "(5) the backend's 503 reaches the client");
    ok(wait_for(sub { error_log_lines(qr/\[error\].*http_503.*proxy_intercept_errors on/) }),
       '(5) an [error] line says proxy_intercept_errors on is needed');
}

# ---- (6) a connect timeout is held like a refused connection
{
    # A backlog of 1 (or so) and nobody accepting: once it is full, SYNs go unanswered.
    my $ls = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $CT_PORT, Listen => 0,
                                   ReuseAddr => 1, Proto => 'tcp') or die "listen: $!";
    my @fill;
    for (1 .. 8) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $CT_PORT, Blocking => 0) or last;
        push @fill, $s;
    }
    sleep 0.2;
    my $c = send_only($port, '/ct/one');
    ok(none_readable(1.5, $c), '(6) connect timeout: held, not answered 504');
    ok(wait_for(sub { error_log_lines(qr/upstream timed out.*while connecting/) }), '(6) nginx timed out connecting');
    cmp_ok(scope_counters('ct')->{failed}, '>=', 1, '(6) counted failed');
    close $_ for @fill;
    close $ls;
    start_backend(name => 'CTBACKEND', port => $CT_PORT);
    my ($r) = read_responses(5, $c);
    is($r && $r->[0], 200, '(6) the backend listens: 200');
    is(scalar(grep { $_->{uri} eq '/ct/one' } backend_log('CTBACKEND')), 1, '(6) it reached the backend once');
}

finish();
