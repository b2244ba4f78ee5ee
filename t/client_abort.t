#!/usr/bin/perl
# client_abort.t: while paused, requests A, B and C are held; B's client closes its
# connection. Status eventually shows aborted=1 and held=2; resume releases A and C
# (released=2), which are answered and reach the backend; B never reaches the backend.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
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

my $s0 = scope_status('default') or die "status endpoint not working\n";
my %base = %{ $s0->{counters} || {} };
$base{$_} //= 0 for qw(held released aborted);

is(scalar ctl('POST', 'enable'), 200, 'paused');

my %c;
for my $n (qw(A B C)) {
    $c{$n} = http_connect($port);
    $c{$n}->send_request(path => "/abort/$n", headers => ['X-Seq' => $n], keepalive => 0);
}
ok(wait_held('default', 3), 'A, B, C held');

$c{B}->close;
my $s;
ok(wait_for(sub { $s = scope_status('default'); $s && $s->{counters}{aborted} - $base{aborted} == 1 && $s->{held} == 2 }),
   'after B closed: aborted=1, held=2') or diag explain $s;
ok(none_readable(0.2, @c{qw(A C)}), 'A and C still held');

my (undef, undef, $j) = ctl('POST', 'disable');
is($j && $j->{scopes}[0]{released}, 2, 'resume released=2');

my @r = read_responses(5, @c{qw(A C)});
is($r[0] && $r[0][0], 200, 'A answered 200');
is($r[1] && $r[1][0], 200, 'C answered 200');

sleep 0.3;    # give a wrongly released B time to show up at the backend
my @seq = map { $_->{seq} } grep { $_->{uri} =~ m{^/abort/} } backend_log();
is_deeply(\@seq, [qw(A C)], 'backend saw A and C, in order, and never B') or diag("backend saw: @seq");

$s = scope_status('default');
is($s->{held}, 0, 'held=0 after resume');
is($s->{counters}{released} - $base{released}, 2, 'counters.released=2');
is($s->{counters}{aborted} - $base{aborted}, 1, 'counters.aborted=1');
is($s->{counters}{held} - $base{held}, 3, 'counters.held=3');

$c{$_}->close for qw(A C);
finish();
