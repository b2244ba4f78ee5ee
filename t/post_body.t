#!/usr/bin/perl
# post_body.t: POST requests held while paused (one ~200 KB body, one small body, one
# small chunked body) reach the backend whole after resume: the backend records the exact
# body length and md5, and every client gets a 200.
use strict;
use warnings;
use Test::More;
use Digest::MD5 qw(md5_hex);
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 10m;
        location / {
            intermission on;
            proxy_http_version 1.1;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');

my $big = join '', map { pack('N', ($_ * 2654435761) & 0xffffffff) } 1 .. 51200;   # 200 KiB
my $small = "name=value&x=" . ('y' x 100);
my $chunked = 'chunked-body-' x 50;

is(scalar ctl('POST', 'enable'), 200, 'paused');

my %req = (
    big     => { body => $big },
    small   => { body => $small },
    chunked => { body => $chunked, chunked => 1 },
);
my %c;
for my $k (sort keys %req) {
    $c{$k} = http_connect($port);
    $c{$k}->send_request(method => 'POST', path => "/post/$k", keepalive => 0,
                         headers => ['Content-Type' => 'application/octet-stream'], %{ $req{$k} });
}
ok(wait_held('default', 3), 'three POST requests held');
ok(none_readable(0.3, values %c), 'no POST answered while paused');
is(scalar(backend_log()), 0, 'backend saw nothing while paused');

my (undef, undef, $j) = ctl('POST', 'disable');
is($j && $j->{scopes}[0]{released}, 3, 'released=3');

my @k = sort keys %c;
my @r = read_responses(10, map { $c{$_} } @k);
for my $i (0 .. $#k) {
    is($r[$i] && $r[$i][0], 200, "$k[$i]: answered 200");
}
my %log = map { $_->{uri} => $_ } backend_log();
for my $k (@k) {
    my $rec = $log{"/post/$k"};
    ok($rec, "$k: reached the backend") or next;
    is($rec->{method}, 'POST', "$k: method POST");
    is($rec->{len}, length $req{$k}{body}, "$k: body length " . length $req{$k}{body});
    is($rec->{md5}, md5_hex($req{$k}{body}), "$k: body md5");
}
$_->close for values %c;

finish();
