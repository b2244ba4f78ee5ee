#!/usr/bin/perl
# failure_hold_modules.t: `intermission_on_failure hold` with the upstream modules other
# than proxy_pass that the README says it covers: fastcgi_pass, uwsgi_pass and grpc_pass.
# Each has a scope and a backend of its own: a FastCGI and a uwsgi responder of the test
# harness, and a stock nginx (no module) answering HTTP/2 on a plain port for grpc_pass.
# For each module:
# (1) The backend is not there: a GET (and, but for grpc, a POST with a 30 KB body) are not
#     answered 502 but held; the scope goes down within interval + 2 s; a third request is
#     then held without trying the backend first (at most one connect attempt, as the
#     readiness check, per interval).
# (2) The backend comes back: all three are answered 200 with the backend's body, each
#     reached it once, the POST's body whole (md5); the scope is up; counters.failed 3.
# (3) fastcgi and uwsgi, `http_503` with `*_intercept_errors on`: a request the backend
#     answers 503 the first time (?status=503&once=) is held and sent again: 200; the
#     scope is never down (a 503 for one URL is that URL's trouble until a check says
#     otherwise, and the trial got an answer).
use strict;
use warnings;
use Test::More;
use Digest::MD5 qw(md5_hex);
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $INTERVAL = 1;    # intermission_on_failure's default interval, s

my $gport = free_port();
set_var('GRPCB', $gport);
my %port = (fcgi => free_port(), uwsgi => free_port());
set_var('FCGIB', $port{fcgi});
set_var('UWSGIB', $port{uwsgi});

start_nginx(<<'CONF');
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location /fcgi/ {
            intermission fcgi;
            intermission_on_failure hold http_503;
            fastcgi_intercept_errors on;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_pass 127.0.0.1:%%FCGIB%%;
        }
        location /uwsgi/ {
            intermission uwsgi;
            intermission_on_failure hold http_503;
            uwsgi_intercept_errors on;
            uwsgi_param REQUEST_METHOD $request_method;
            uwsgi_param REQUEST_URI $request_uri;
            uwsgi_param CONTENT_LENGTH $content_length;
            uwsgi_pass 127.0.0.1:%%UWSGIB%%;
        }
        location /grpc/ {
            intermission grpc;
            intermission_on_failure hold;
            grpc_pass grpc://127.0.0.1:%%GRPCB%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $GRPC_BACKEND = <<'CONF';
http {
    server {
        listen 127.0.0.1:%%GRPCB_PORT%% http2;
        location / { return 200 "ok $request_uri"; }
    }
}
CONF

sub start_module_backend {
    my ($m) = @_;
    if ($m eq 'grpc') {
        start_instance('grpcb', $GRPC_BACKEND, ports => { GRPCB => $gport }, no_module => 1);
        return;
    }
    start_backend(name => uc($m) . 'B', port => $port{$m}, keep_log => 1,
                  proto => $m eq 'fcgi' ? 'fastcgi' : 'uwsgi');
}

# the URIs that reached the module's backend, each with how often
sub arrived {
    my ($m) = @_;
    my %n;
    if ($m eq 'grpc') {
        my $log = instance('grpcb')->{prefix} . '/access.log';
        for (file_lines($log)) { $n{$1}++ if m{"\w+ (\S+) HTTP/2\.0" 200} }
    } else {
        $n{ $_->{uri} }++ for backend_log(uc($m) . 'B');
    }
    return \%n;
}

sub post_body { my ($c, $path, $body) = @_; $c->send_request(method => 'POST', path => $path, body => $body, keepalive => 0) }

for my $m (qw(fcgi uwsgi grpc)) {
    my $body = join '', map { chr(65 + $_ % 26) } 1 .. 30_000;
    my @c;
    push @c, send_only(port(), "/$m/get");
    if ($m ne 'grpc') {
        my $p = http_connect(port());
        post_body($p, "/$m/post", $body);
        push @c, $p;
    }
    ok(wait_down($m, $INTERVAL + 2), "(1) $m: the scope goes down");
    my $t0 = time;
    push @c, send_only(port(), "/$m/third");
    ok(wait_held($m, scalar @c), "(1) $m: " . scalar(@c) . ' held');
    ok(none_readable(0.5, @c), "(1) $m: none answered (no 502)");
    my $tries = connect_failures("/$m/third");
    cmp_ok($tries, '<=', 1 + int((time - $t0) / (0.8 * $INTERVAL)),
           "(1) $m: the third tried the dead backend only as the readiness check ($tries)");

    start_module_backend($m);
    my @r = read_responses($INTERVAL + 3, @c);
    my @want = ("/$m/get", ($m ne 'grpc' ? "/$m/post" : ()), "/$m/third");
    for my $i (0 .. $#want) {
        is($r[$i] && $r[$i][0], 200, "(2) $m: $want[$i] answered 200");
        like($r[$i] && $r[$i][2], qr/^ok \Q$want[$i]\E/, "(2) $m: ... with the backend's body");
    }
    $_->close for @c;
    my $n = arrived($m);
    is_deeply({ map { $_ => $n->{$_} } @want }, { map { $_ => 1 } @want }, "(2) $m: each reached the backend once");
    if ($m ne 'grpc') {
        my ($post) = grep { $_->{uri} eq "/$m/post" } backend_log(uc($m) . 'B');
        is($post && $post->{md5}, md5_hex($body), "(2) $m: the POST's body reached it whole");
    }
    ok(wait_down($m, 2, 0), "(2) $m: up");
    is(scope_counters($m)->{failed}, scalar @want, "(2) $m: counters.failed " . scalar @want);
}

for my $m (qw(fcgi uwsgi)) {
    my $went = scope_counters($m)->{went_down};
    my ($st, undef, $b) = http_get(port(), "/$m/boot?status=503&once=b$m", timeout => $INTERVAL + 3);
    is($st, 200, "(3) $m: a backend's 503 is held and sent again: 200");
    like($b // '', qr/^ok /, "(3) $m: ... the backend's answer");
    is(scalar(grep { $_->{uri} =~ m{^/$m/boot} } backend_log(uc($m) . 'B')), 2, "(3) $m: it reached the backend twice");
    is(scope_counters($m)->{went_down}, $went, "(3) $m: the scope did not go down");
}

stop_instance('grpcb');
finish();
