#!/usr/bin/perl
# intermissionctl_check.t: a --check URL that goes through nginx's paused scope is held by
# nginx like any other request, so it can only time out. `intermissionctl run` says so: the
# check connected, got no answer, and the paused scope's held count went up meanwhile.
# 1. --check http://<nginx>/health (through the paused scope "default"): exit 1, the
#    message says the check request appears to be held by nginx's paused scope(s) default
#    and to check the backend at its private address; everything resumed; nginx counted
#    the checks as held, then aborted (each attempt gave up and closed its connection).
# 2. A backend that is slow itself (--check <backend>/health?sleep=3000, not through
#    nginx) times out too, but nothing was held: a plain "timed out", no such claim.
use strict;
use warnings;
use Test::More;
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $E = 'http://127.0.0.1:' . port('CTL_PORT') . '/ctl/';
my $BACKEND = 'http://127.0.0.1:' . backend_port();

# ---- 1. the check goes through nginx
{
    my $c0 = scope_status('default')->{counters};
    my ($rc, $out, $err) = intermissionctl('run', '--endpoint', $E, '--request-timeout', '1s',
                                           '--check', "http://127.0.0.1:$port/c1/health",
                                           '--check-timeout', '2500ms', '--', 'true');
    is($rc, 1, '1: exit 1');
    like($err, qr{run failed at step 'check': http://127\.0\.0\.1:$port/c1/health not healthy .*timed out}s,
         '1: the check failed with a timeout') or diag($err);
    like($err, qr/the check request appears to be held by nginx's paused scope\(s\) default: check the backend at its private address, not through nginx/,
         '1: ... and the message says why') or diag($err);
    not_paused('1');
    my $c1 = scope_status('default')->{counters};
    ok($c1->{held} > $c0->{held} && $c1->{aborted} > $c0->{aborted},
       '1: the checks were held by nginx, and aborted when they gave up') or diag explain [$c0, $c1];
    ok(!grep({ $_->{uri} eq '/c1/health' } backend_log()), '1: no check reached the backend');
}

# ---- 2. a slow backend, not through nginx
{
    my ($rc, $out, $err) = intermissionctl('run', '--endpoint', $E, '--request-timeout', '1s',
                                           '--check', "$BACKEND/c2/health?sleep=3000",
                                           '--check-timeout', '1500ms', '--', 'true');
    is($rc, 1, '2: exit 1');
    like($err, qr/run failed at step 'check': .*timed out/s, '2: the check timed out') or diag($err);
    unlike($err, qr/appears to be held/, '2: ... and nothing claims it was held by nginx');
    not_paused('2');
}

finish();
