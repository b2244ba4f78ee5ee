#!/usr/bin/perl
# release_rate.t: intermission_release_rate paces a release, so that a backend that has just
# restarted is not hit by every held request in the same millisecond: held requests go out
# at that pace (after a first burst), in arrival order, and none is lost. Without the
# directive a release is immediate. Bad values fail nginx -t.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use Intermission::Test;

start_nginx(<<'CONF');
worker_processes 1;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location /paced/ {
            intermission paced;
            intermission_release_rate 20r/s burst=5;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /fast/ {
            intermission fast;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');

sub hold_and_release {
    my ($scope, $n) = @_;
    is(scalar ctl('POST', 'pause', "scope=$scope"), 200, "$scope: paused");
    my @c;
    for my $i (1 .. $n) {
        my $c = http_connect($port);
        $c->send_request(path => "/$scope/$i", headers => ['X-Seq' => $i], keepalive => 0);
        push @c, $c;
        sleep 0.005;
    }
    ok(wait_held($scope, $n), "$scope: $n held");
    my (undef, undef, $j) = ctl('POST', 'resume', "scope=$scope");
    is($j && $j->{scopes}[0]{released}, $n, "$scope: the resume releases $n");
    my @r = read_responses(10, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), $n, "$scope: all $n answered 200");
    $_->close for @c;
    my @log = grep { $_->{uri} =~ m{^/$scope/} } backend_log();
    is_deeply([map { $_->{seq} } @log], [1 .. $n], "$scope: reached the backend once each, in order");
    return @log;
}

# 30 requests at 20r/s with a burst of 5: the first 5 at once, the other 25 over ~1.25 s.
my @paced = hold_and_release('paced', 30);
my $spread = $paced[-1]{time} - $paced[0]{time};
cmp_ok($spread, '>=', 0.9, "paced: the release is spread out (${\ sprintf '%.2f', $spread} s)");
cmp_ok($paced[4]{time} - $paced[0]{time}, '<', 0.5, 'paced: the burst goes out at once');

my @fast = hold_and_release('fast', 30);
cmp_ok($fast[-1]{time} - $fast[0]{time}, '<', 0.9, 'without a rate the release is immediate');

for my $bad ('0r/s', '10', '10r/h', '1.5r/s', '10r/s burst=0', '10r/s burst=x', '10r/s nodelay',
             '10r/s burst=1 burst=2') {
    my ($rc, $out) = nginx_t("http {\n    intermission_release_rate $bad;\n}\n");
    isnt($rc, 0, "nginx -t fails: $bad");
    like($out, qr/"intermission_release_rate"/, "... naming the directive: $bad");
}
my ($rc) = nginx_t("http {\n    intermission_release_rate 600r/m burst=50;\n}\n");
is($rc, 0, 'nginx -t accepts 600r/m burst=50');

finish();
