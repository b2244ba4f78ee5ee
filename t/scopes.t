#!/usr/bin/perl
# scopes.t: scopes are independent. Locations in scopes alpha, beta and default
# (`intermission on`): pausing alpha holds only alpha; resuming alpha releases it.
# `enable` without a scope pauses every configured scope, `disable` without a scope
# resumes them all. In a server with `intermission on`, a nested location with
# `intermission off` is never held while its siblings are.
use strict;
use warnings;
use Test::More;
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location /alpha/ {
            intermission alpha;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /beta/ {
            intermission beta;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /def/ {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    server {
        listen 127.0.0.1:%%SRV2_PORT%%;
        intermission on;
        location / {
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /outer/ {
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            location /outer/free/ {
                intermission off;
                proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            }
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $port2 = port('SRV2_PORT');

sub names { my ($j) = @_; [sort map { $_->{name} } @{ ($j && $j->{scopes}) || [] }] }
sub by_name { my ($j) = @_; +{ map { $_->{name} => $_ } @{ ($j && $j->{scopes}) || [] } } }

my $st_all = ctl_status();
is_deeply(names($st_all), [qw(alpha beta default)], 'status lists alpha, beta, default');

# status?scope=alpha lists just alpha
my ($st, undef, $j) = ctl('GET', 'status', 'scope=alpha');
is($st, 200, 'status?scope=alpha: 200');
is_deeply(names($j), ['alpha'], 'status?scope=alpha lists only alpha');

# pause alpha only
($st, undef, $j) = ctl('POST', 'enable', 'scope=alpha');
is($st, 200, 'enable?scope=alpha: 200');
is_deeply(names($j), ['alpha'], 'enable?scope=alpha acts on alpha only');
ok(by_name($j)->{alpha}{paused} && by_name($j)->{alpha}{changed}, 'alpha paused, changed');

my $ca = http_connect($port);
$ca->send_request(path => '/alpha/1', keepalive => 0);
my ($bs) = http_get($port, '/beta/1');
is($bs, 200, 'beta passes while alpha is paused');
my ($ds) = http_get($port, '/def/1');
is($ds, 200, 'default passes while alpha is paused');
($ds) = http_get($port2, '/x1');
is($ds, 200, 'server-level default passes while alpha is paused');
ok(!$ca->readable(0.2), 'alpha request held');
ok(wait_held('alpha', 1), 'alpha held=1');
my $sb = by_name(ctl_status());
ok(!$sb->{beta}{paused} && !$sb->{default}{paused}, 'beta and default not paused');
is(scalar(grep { $_->{uri} eq '/alpha/1' } backend_log()), 0, 'alpha request not at backend');

($st, undef, $j) = ctl('POST', 'disable', 'scope=alpha');
is($st, 200, 'disable?scope=alpha: 200');
is_deeply(names($j), ['alpha'], 'disable?scope=alpha acts on alpha only');
is(by_name($j)->{alpha}{released}, 1, 'alpha released=1');
my ($as, undef, $abody) = $ca->read_response(5);
is($as, 200, 'alpha request answered after resume');
is($abody, 'ok /alpha/1', 'alpha request reached the backend');
$ca->close;

# enable without scope pauses all three
($st, undef, $j) = ctl('POST', 'enable');
is($st, 200, 'enable (all): 200');
is_deeply(names($j), [qw(alpha beta default)], 'enable (all) lists every scope');
my $bn = by_name($j);
is(scalar(grep { $bn->{$_}{paused} && $bn->{$_}{changed} } qw(alpha beta default)), 3,
   'all three paused and changed');

my %c;
for my $k (qw(alpha beta def)) {
    $c{$k} = http_connect($port);
    $c{$k}->send_request(path => "/$k/2", keepalive => 0);
}
$c{srv2} = http_connect($port2);
$c{srv2}->send_request(path => '/x2', keepalive => 0);
$c{outer} = http_connect($port2);
$c{outer}->send_request(path => '/outer/x', keepalive => 0);

my ($fs, undef, $fb) = http_get($port2, '/outer/free/1');
is($fs, 200, 'nested `intermission off` location answered while everything is paused');
is($fb, 'ok /outer/free/1', 'nested `intermission off` reached the backend');

ok(none_readable(0.3, values %c), 'alpha, beta, default and server-level requests held');
ok(wait_held('alpha', 1) && wait_held('beta', 1) && wait_held('default', 3),
   'held: alpha=1 beta=1 default=3');

($st, undef, $j) = ctl('POST', 'disable');
is($st, 200, 'disable (all): 200');
$bn = by_name($j);
is_deeply(names($j), [qw(alpha beta default)], 'disable (all) lists every scope');
is_deeply([map { $bn->{$_}{released} } qw(alpha beta default)], [1, 1, 3], 'released per scope');
ok(!grep({ $bn->{$_}{paused} } qw(alpha beta default)), 'none paused');

my @k = sort keys %c;
my @r = read_responses(5, map { $c{$_} } @k);
is($r[$_] && $r[$_][0], 200, "$k[$_] answered after resume") for 0 .. $#k;
$_->close for values %c;

my $s = by_name(ctl_status());
is(scalar(grep { $s->{$_}{paused} || $s->{$_}{held} } qw(alpha beta default)), 0,
   'status: nothing paused or held');

finish();
