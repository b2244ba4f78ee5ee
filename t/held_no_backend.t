#!/usr/bin/perl
# held_no_backend.t: while the default scope is paused, requests to an intermission
# location get no answer and never reach the backend; status counts them (held, oldest
# age, paused_since); resume releases every one of them to the backend (200), after
# which held=0 and counters.released=N. The control location sits in a server that
# inherits `intermission on` from http{} and must still answer while paused.
use strict;
use warnings;
use Test::More;
use Intermission::Test;

my $N = 6;

start_nginx(<<'CONF');
http {
    intermission on;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');

# not paused: passes straight through
my ($st, $h, $body) = http_get($port, '/warmup');
is($st, 200, 'not paused: request answered');
is($body, 'ok /warmup', 'not paused: backend body');

my $s = scope_status('default');
ok($s, 'status lists the default scope') or die "status endpoint not working\n";
is($s->{paused}, 0, 'default not paused');
is($s->{held}, 0, 'nothing held');
ok(!defined $s->{paused_since}, 'paused_since null when not paused');
ok(!defined $s->{oldest_held_ms}, 'oldest_held_ms null when nothing held');
my $released_before = $s->{counters}{released} // 0;

my ($cst, $ch, $j, $raw) = ctl('POST', 'enable');
is($cst, 200, 'enable: 200');
like($ch->{'content-type'} // '', qr{^application/json}, 'enable: JSON content type');
is($j->{action}, 'pause', 'enable: action pause');
my ($d) = grep { $_->{name} eq 'default' } @{ $j->{scopes} || [] };
ok($d && $d->{paused} && $d->{changed}, 'enable: default paused, changed');
like($raw, qr/"paused"\s*:\s*true/, 'paused is a JSON boolean');

my $before = scalar backend_log();
my @c = map { http_connect($port) } 1 .. $N;
$c[$_]->send_request(path => "/held/$_", headers => ['X-Seq' => $_], keepalive => 0) for 0 .. $N - 1;

ok(none_readable(0.3, @c), "paused: none of $N requests answered within 300 ms");
ok(wait_held('default', $N), "status: held=$N");
is(scalar backend_log(), $before, 'backend saw none of the held requests');

$s = scope_status('default');
is($s->{paused}, 1, 'status: paused');
ok(defined $s->{paused_since} && $s->{paused_since} =~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/,
   'paused_since is an RFC3339 timestamp') or diag explain $s;
ok(defined $s->{paused_ms} && $s->{paused_ms} >= 0, 'paused_ms is a number');
ok(defined $s->{oldest_held_ms} && $s->{oldest_held_ms} >= 0, 'oldest_held_ms set while holding');
ok(none_readable(0.1, @c), 'still nothing answered after status requests');

($cst, $ch, $j) = ctl('POST', 'disable');
is($cst, 200, 'disable: 200');
is($j->{action}, 'resume', 'disable: action resume');
($d) = grep { $_->{name} eq 'default' } @{ $j->{scopes} || [] };
ok($d && !$d->{paused} && $d->{changed}, 'disable: default resumed, changed');
is($d && $d->{released}, $N, "disable: released=$N");

my @r = read_responses(5, @c);
for my $i (0 .. $N - 1) {
    is($r[$i] && $r[$i][0], 200, "held request $i answered 200 after resume");
    is($r[$i] && $r[$i][2], "ok /held/$i", "held request $i: backend body");
}
my @log = grep { $_->{uri} =~ m{^/held/} } backend_log();
is(scalar @log, $N, "backend received all $N released requests");

$s = scope_status('default');
is($s->{paused}, 0, 'after resume: not paused');
is($s->{held}, 0, 'after resume: held=0');
ok(!defined $s->{oldest_held_ms}, 'after resume: oldest_held_ms null');
ok(!defined $s->{paused_since}, 'after resume: paused_since null');
is($s->{counters}{released} - $released_before, $N, "counters.released grew by $N");
is($s->{counters}{held}, $N, "counters.held=$N");
is($s->{counters}{aborted}, 0, 'counters.aborted=0');

($st) = http_get($port, '/after');
is($st, 200, 'after resume: new requests pass');

$c[$_]->close for 0 .. $N - 1;
finish();
