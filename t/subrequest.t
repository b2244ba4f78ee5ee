#!/usr/bin/perl
# subrequest.t: subrequests are not held on their own. A location without intermission
# that does `auth_request /auth`, where /auth is an `intermission on` location proxied to
# the backend, is answered while the scope is paused (the auth subrequest runs and reaches
# the backend). A direct request to an `intermission on` location is held meanwhile, which
# shows the pause is in effect.
use strict;
use warnings;
use Test::More;
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location /main/ {
            auth_request /auth;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location = /auth {
            internal;
            intermission on;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%/authcheck;
        }
        location /direct/ {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');

my ($st, undef, $body) = http_get($port, '/main/pre');
is($st, 200, 'not paused: auth_request location answered');

is(scalar ctl('POST', 'enable'), 200, 'paused');

my $d = http_connect($port);
$d->send_request(path => '/direct/1', keepalive => 0);
ok(wait_held('default', 1), 'direct request to the intermission location held');

($st, undef, $body) = http_get($port, '/main/1', timeout => 5);
is($st, 200, 'main request answered while paused (auth subrequest not held)');
is($body, 'ok /main/1', 'main request reached the backend');
my @auth = grep { $_->{uri} eq '/authcheck' && ($_->{headers}{'x-original-uri'} // '') eq '/main/1' }
           backend_log();
is(scalar @auth, 1, 'the auth subrequest reached the backend while paused');

ok(!$d->readable(0), 'direct request still held');
my $s = scope_status('default');
is($s && $s->{held}, 1, 'held=1 (only the direct request)');

is(scalar ctl('POST', 'disable'), 200, 'resumed');
($st, undef, $body) = $d->read_response(5);
is($st, 200, 'direct request answered after resume');
is($body, 'ok /direct/1', 'direct request reached the backend');
$d->close;

finish();
