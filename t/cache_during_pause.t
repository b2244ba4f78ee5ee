#!/usr/bin/perl
# cache_during_pause.t: what the README says of cached and static content during a pause.
# - A proxy_cache hit in a location with `intermission on` is held like any request (the
#   hold is in the access phase, before the cache lookup), and answered from the cache after
#   the resume.
# - The README's recipe keeps it served: `intermission_bypass` for what the cache holds,
#   with `proxy_cache_use_stale error`, answers from the cache during the pause while the
#   backend is down; a location with `intermission off` serves static files.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use Intermission::Test;

my $CONF = <<'CONF';
http {
    proxy_cache_path %%PREFIX%%/cache keys_zone=c:1m;
    map $cookie_session $anonymous {
        ""      1;
        default 0;
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        intermission on;
        location /held/ {
            proxy_cache c;
            proxy_cache_valid 200 1m;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /pages/ {
            intermission_bypass $anonymous;
            proxy_cache c;
            proxy_cache_valid 200 1s;
            proxy_cache_use_stale error timeout http_502 http_503;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /assets/ {
            intermission off;
            root %%PREFIX%%/html;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

start_nginx($CONF);
my $port = port('PORT');
mkdir prefix() . '/html/assets';
write_file('html/assets/app.css', "body{}\n");

my ($st, $h) = http_get($port, '/held/a');
is($st, 200, 'a cacheable page, first from the backend');
($st, $h) = http_get($port, '/pages/home');
is($st, 200, 'and another, cached with use_stale');


ctl('POST', 'enable');
my $c = http_connect($port);
$c->send_request(path => '/held/a');
ok(!$c->readable(1), 'a cache hit in a held location is held');
ok(wait_held('default', 1), 'status: held 1');

my $bport = backend_port();
stop_backend();
sleep 1.2;    # /pages/home is stale now
($st, $h, my $body) = http_get($port, '/pages/home');
is($st, 200, 'bypass + proxy_cache_use_stale: served from the cache while paused and down');
is($body, 'ok /pages/home', 'the cached answer');
($st) = http_get($port, '/pages/home', headers => ['Cookie', 'session=1'], timeout => 1);
ok(!defined $st, 'a request the bypass does not match is held');
($st, $h, $body) = http_get($port, '/assets/app.css');
is($st, 200, 'static files of an `intermission off` location are served');

start_backend(port => $bport, keep_log => 1);
ctl('POST', 'disable');
my ($r) = read_responses(5, $c);
is($r && $r->[0], 200, 'after the resume the held hit is answered');
is(scalar(grep { $_->{uri} eq '/held/a' } backend_log()), 1, 'from the cache: the backend saw /held/a once');

finish();
