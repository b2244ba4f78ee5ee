#!/usr/bin/perl
# failure_hold_check.t: `intermission_on_failure hold check=URI`: the readiness check is a
# subrequest to a location of the operator's choosing (as auth_request makes), not a trial
# send of a held request; its 2xx/3xx says the backend is ready, anything else that it is
# not. Each block has a scope and a backend of its own.
# (1) Backend stopped: a POST with a body and a GET are held; the check gets no connection
#     (502) and the scope goes down (status down true, an [error] line naming the check URI
#     and its answer). While down, checks are sent about one per interval (checks grows,
#     bounded) and a new GET is held without trying the backend (no "connect() failed"
#     line for it). The held requests were never sent again meanwhile: one "connect()
#     failed" line each. The backend comes back: all three are answered 200, each reached
#     the backend once (the POST with its body, md5), and the checks reached it as GETs of
#     /health with neither a body nor a Content-Length (the held POST's length is not the
#     check's); an [error] line says the scope is up, naming the check; down false.
# (2) The check decides, not the trial: with `http_503` (proxy_intercept_errors on), a URL
#     that the backend answers 503 once is held; the check location answers 503 while a
#     "booting" file exists (the backend is booting), so the scope goes down and a new
#     request is held without reaching the backend. The file goes: the check answers 200,
#     the scope is up, both are answered 200; the 503 URL reached the backend twice, the
#     new one once.
# (3) A client that leaves while held, with checks going on: counted aborted, and the
#     checks go on for the others (the lease of a check is not lost with its request).
# (4) HTTP/2: a GET and a POST over one connection (nghttp), held while the check gets no
#     connection (the check is a subrequest of a stream); the backend back, both 200, the
#     POST at the backend once with its body.
use strict;
use warnings;
use Test::More;
use Digest::MD5 qw(md5_hex);
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $INTERVAL = 0.3;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%H2_PORT%% http2;
        location /h2/ {
            intermission h2;
            intermission_on_failure hold check=/_h2ready interval=300ms;
            proxy_pass http://127.0.0.1:%%H2BACKEND_PORT%%;
        }
        location = /_h2ready {
            internal;
            proxy_pass_request_body off;
            proxy_pass http://127.0.0.1:%%H2BACKEND_PORT%%/health;
        }
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        location /app/ {
            intermission app;
            intermission_on_failure hold check=/_ready interval=300ms;
            proxy_pass http://127.0.0.1:%%APPBACKEND_PORT%%;
        }
        location = /_ready {
            internal;
            proxy_pass_request_body off;
            proxy_connect_timeout 1s;
            proxy_read_timeout 2s;
            proxy_pass http://127.0.0.1:%%APPBACKEND_PORT%%/health;
        }
        location /boot/ {
            intermission boot;
            intermission_on_failure hold http_503 check=/_boot?x=1 interval=300ms;
            proxy_intercept_errors on;
            proxy_pass http://127.0.0.1:%%BOOTBACKEND_PORT%%;
        }
        location = /_boot {
            internal;
            if (-f %%PREFIX%%/booting) {
                return 503;
            }
            proxy_pass http://127.0.0.1:%%BOOTBACKEND_PORT%%/health;
        }
    }
    %%CONTROL_SERVER%%
}
CONF
my $port = port('PORT');

# "connect() failed" lines of a request's own attempts (not of the checks made from it)
sub tries { my ($uri) = @_; scalar grep { !/subrequest:/ } error_log_lines(qr/connect\(\) failed.*request: "\w+ \Q$uri\E HTTP/) }
sub at { my ($name, $uri) = @_; grep { $_->{uri} eq $uri } backend_log($name) }
sub state_lines { my ($scope) = @_; grep { /\[error\].*intermission: scope "\Q$scope\E" is/ } error_log_lines() }

# ---- (1) the check gets no connection, then an answer
{
    my $bport = backend_port('APPBACKEND');
    stop_backend('APPBACKEND');
    my $body = 'id=' . ('p' x 3000);
    my $post = http_connect($port);
    $post->send_request(method => 'POST', path => '/app/p1', body => $body, keepalive => 0);
    my $get = send_only($port, '/app/g1');
    ok(wait_down('app', 5), '(1) the check gets no connection: down');
    my @l = state_lines('app');
    ok(scalar(grep { /is down: the readiness check \/_ready answered 502/ } @l), '(1) an [error] line names the check and its answer')
        or diag(join "\n", @l);
    my $late = send_only($port, '/app/g2');
    my $c0 = scope_counters('app')->{checks};
    sleep 1.5;
    my $c1 = scope_counters('app')->{checks};
    cmp_ok($c1 - $c0, '>=', 2, "(1) checks go on while down ($c0 -> $c1)");
    cmp_ok($c1 - $c0, '<=', 1.5 / ($INTERVAL * 0.8) + 2, '(1) ... about one per interval');
    ok(none_readable(0.1, $post, $get, $late), '(1) nothing answered while down');
    is(tries('/app/g2'), 0, '(1) a request that came while down never tried the backend');
    is(tries('/app/p1'), 1, '(1) the held POST was not sent again while down');
    is(tries('/app/g1'), 1, '(1) nor the held GET');
    start_backend(name => 'APPBACKEND', port => $bport, keep_log => 1);
    my @r = read_responses(5, $post, $get, $late);
    is_deeply([map { $_ ? $_->[0] : undef } @r], [200, 200, 200], '(1) the backend is back: all answered 200');
    my @p = at('APPBACKEND', '/app/p1');
    is(scalar @p, 1, '(1) the POST reached the backend once');
    is($p[0] && $p[0]{md5}, md5_hex($body), '(1) ... with its body');
    is(scalar(at('APPBACKEND', '/app/g1')), 1, '(1) g1 reached it once');
    is(scalar(at('APPBACKEND', '/app/g2')), 1, '(1) g2 reached it once');
    my @h = at('APPBACKEND', '/health');
    cmp_ok(scalar @h, '>=', 1, '(1) the check reached the backend');
    ok(!grep({ $_->{method} ne 'GET' || $_->{len} != 0 || exists $_->{headers}{'content-length'} } @h),
       '(1) ... as GETs with no body and no Content-Length');
    ok(wait_for(sub { grep { /is up again after \d+ ms down: the readiness check \/_ready answered 200/ } state_lines('app') }),
       '(1) an [error] line says the scope is up, naming the check');
    ok(!scope_status('app')->{down}, '(1) down false');
}

# ---- (2) http_503: the check says the backend is booting
{
    write_file(prefix() . '/booting', '');
    my $x = send_only($port, '/boot/x?status=503&once=bx');
    ok(wait_down('boot', 5), '(2) the check answers 503 while booting: down');
    my $y = send_only($port, '/boot/y');
    ok(none_readable(1, $x, $y), '(2) both held');
    is(scalar(at('BOOTBACKEND', '/boot/y')), 0, '(2) the new request did not reach the backend');
    unlink prefix() . '/booting';
    my @r = read_responses(5, $x, $y);
    is_deeply([map { $_ ? $_->[0] : undef } @r], [200, 200], '(2) booted: both answered 200');
    is(scalar(at('BOOTBACKEND', '/boot/x?status=503&once=bx')), 2, '(2) the 503 URL reached the backend twice');
    is(scalar(at('BOOTBACKEND', '/boot/y')), 1, '(2) the new one once');
    ok(!scope_status('boot')->{down}, '(2) up');
}

# ---- (3) a client leaves while checks go on
{
    my $bport = backend_port('APPBACKEND');
    stop_backend('APPBACKEND');
    my $a0 = scope_counters('app')->{aborted} // 0;
    my @c = map { send_only($port, "/app/l$_") } 1 .. 3;
    ok(wait_down('app', 5), '(3) down');
    $c[0]->close;
    ok(wait_for(sub { (scope_counters('app')->{aborted} // 0) == $a0 + 1 }), '(3) the one that left is counted aborted');
    my $k0 = scope_counters('app')->{checks};
    sleep 1;
    cmp_ok(scope_counters('app')->{checks} - $k0, '>=', 2, '(3) checks go on');
    start_backend(name => 'APPBACKEND', port => $bport, keep_log => 1);
    my @r = read_responses(5, @c[1, 2]);
    is_deeply([map { $_ ? $_->[0] : undef } @r], [200, 200], '(3) the others: 200');
    is(scalar(at('APPBACKEND', '/app/l1')), 0, '(3) the one that left never reached the backend');
}

# ---- (4) HTTP/2 streams
SKIP: {
    my $NGHTTP = '/usr/bin/nghttp';
    skip 'nghttp (nghttp2-client) not installed', 5 unless -x $NGHTTP;
    my $base = 'http://127.0.0.1:' . port('H2_PORT');
    my $bport = backend_port('H2BACKEND');
    stop_backend('H2BACKEND');
    my $body = 'id=h2-check';
    my $file = write_file('h2-body', $body);
    my $h = bg_start($NGHTTP, '-n', '-s', '-d', $file, "$base/h2/post", "$base/h2/get");
    ok(wait_down('h2', 5), '(4) HTTP/2: the check gets no connection: down');
    ok(!bg_wait($h, 0.5), '(4) nothing answered while down');
    start_backend(name => 'H2BACKEND', port => $bport, keep_log => 1);
    my ($rc, $out) = bg_wait($h, 5);
    is($rc, 0, '(4) nghttp exits 0') or diag($out // 'still running');
    my @codes = ($out // '') =~ /\s(\d{3})\s+\S+\s+\/h2\//g;
    is_deeply(\@codes, [200, 200], '(4) both streams: 200') or diag($out);
    my @p = at('H2BACKEND', '/h2/post');
    ok(@p == 1 && $p[0]{md5} eq md5_hex($body), '(4) the POST reached the backend once, with its body');
}

finish();
