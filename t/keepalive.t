#!/usr/bin/perl
# keepalive.t: a keep-alive connection that already made a request before the pause has
# its next request held too (HTTP/1.1, and HTTP/1.0 with Connection: keep-alive); after
# resume that request is answered on the same client connection (and the backend sees the
# same nginx connection number for both requests), and the connection stays usable.
# A connection accepted before the pause whose first request comes after it is held too.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        keepalive_timeout 60s;
        location / {
            intermission on;
            proxy_set_header X-Conn $connection;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');

for my $ver ('1.1', '1.0') {
    my $tag = "HTTP/$ver";
    (my $p = $ver) =~ s/\.//;
    my $c = http_connect($port);

    my ($st, $h, $b) = $c->request(path => "/ka$p/1", version => $ver, keepalive => 1);
    is($st, 200, "$tag: first request answered");
    like($h->{connection} // '', qr/keep-alive/i, "$tag: connection kept alive") if $ver eq '1.0';
    ok(!$c->closed(0.05), "$tag: connection still open");

    # a second connection accepted before the pause that sends its first request after it
    my $idle = http_connect($port);
    sleep 0.05;    # let nginx accept it

    is(scalar ctl('POST', 'enable'), 200, "$tag: paused");

    $idle->send_request(path => "/ka$p/idle0", version => $ver, keepalive => 1);
    $c->send_request(path => "/ka$p/2", version => $ver, keepalive => 1);
    ok(!$c->readable(0.3), "$tag: second request on the open keep-alive connection is held");
    ok(!$idle->readable(0), "$tag: first request on the connection opened before the pause is held");
    ok(wait_held('default', 2), "$tag: held=2");
    is(scalar(grep { $_->{uri} =~ m{^/ka$p/(2|idle0)} } backend_log()), 0,
       "$tag: backend saw neither held request");

    my (undef, undef, $j) = ctl('POST', 'disable');
    is($j && $j->{scopes}[0]{released}, 2, "$tag: released=2");

    ($st, $h, $b) = $c->read_response(5);
    is($st, 200, "$tag: held request answered on the same connection");
    is($b, "ok /ka$p/2", "$tag: body of the held request");
    ($st, $h, $b) = $idle->read_response(5);
    is($st, 200, "$tag: request on the other connection answered");

    my @log = grep { $_->{uri} =~ m{^/ka$p/[12]$} } backend_log();
    is(scalar @log, 2, "$tag: backend saw both requests of the connection");
    ok(@log == 2 && defined $log[0]{xconn} && $log[0]{xconn} eq $log[1]{xconn},
       "$tag: both came over the same client connection");

    ($st, undef, $b) = $c->request(path => "/ka$p/3", version => $ver, keepalive => 0);
    is($st, 200, "$tag: connection still usable after release");
    is($b, "ok /ka$p/3", "$tag: third request body");
    $c->close;
    $idle->close;
}

finish();
