#!/usr/bin/perl
# access.t: a released request still goes through access control. With
# `satisfy any; allow 192.0.2.1; deny all; auth_basic ...` both a request without
# credentials and one with valid credentials are held while paused; after resume the
# first gets 401 and never reaches the backend, the second gets 200 and does. A location
# with `satisfy all; deny all` gives 403 after release and never reaches the backend.
use strict;
use warnings;
use Test::More;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(sleep);
use Intermission::Test;

write_file('htpasswd', "user:{PLAIN}secret\n");

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location /auth/ {
            intermission on;
            satisfy any;
            allow 192.0.2.1;
            deny all;
            auth_basic "x";
            auth_basic_user_file %%PREFIX%%/htpasswd;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /denied/ {
            intermission on;
            satisfy all;
            deny all;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $good = 'Basic ' . encode_base64('user:secret', '');
my $bad  = 'Basic ' . encode_base64('user:wrong', '');

# sanity, not paused
my ($st) = http_get($port, '/auth/pre');
is($st, 401, 'not paused: no credentials -> 401');
($st) = http_get($port, '/auth/pre', headers => [Authorization => $good]);
is($st, 200, 'not paused: credentials -> 200');
($st) = http_get($port, '/denied/pre');
is($st, 403, 'not paused: deny all -> 403');
my $pre = scalar backend_log();

is(scalar ctl('POST', 'enable'), 200, 'paused');

my %c;
my %req = (
    noauth  => ['/auth/noauth'],
    badauth => ['/auth/badauth', Authorization => $bad],
    auth    => ['/auth/ok', Authorization => $good],
    denied  => ['/denied/x'],
);
for my $k (sort keys %req) {
    my ($path, @h) = @{ $req{$k} };
    $c{$k} = http_connect($port);
    $c{$k}->send_request(path => $path, headers => \@h, keepalive => 0);
}
ok(none_readable(0.3, values %c), 'all four held: no 401/403/200 while paused');
ok(wait_held('default', 4), 'held=4');
is(scalar backend_log(), $pre, 'backend saw nothing while paused');

is(scalar ctl('POST', 'disable'), 200, 'resumed');
my @k = sort keys %c;
my @r = read_responses(5, map { $c{$_} } @k);
my %got = map { $k[$_] => ($r[$_] ? $r[$_][0] : undef) } 0 .. $#k;
is($got{noauth}, 401, 'released request without credentials -> 401');
is($got{badauth}, 401, 'released request with wrong credentials -> 401');
is($got{auth}, 200, 'released request with credentials -> 200');
is($got{denied}, 403, 'released request to a `deny all` location -> 403');

sleep 0.2;
my @uris = map { $_->{uri} } backend_log();
splice @uris, 0, $pre;
is_deeply(\@uris, ['/auth/ok'], 'only the authenticated request reached the backend')
    or diag("backend saw: @uris");

$_->close for values %c;
finish();
