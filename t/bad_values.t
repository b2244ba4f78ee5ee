#!/usr/bin/perl
# bad_values.t: time and number arguments of the new control options and directives.
# Control endpoint:
# - malformed, negative, zero, fractional, too large (> 24h, overflow) times in
#   timeout= / auto_resume=, wait= other than "drained", timeout without wait on enable,
#   auto_resume on disable/drain/status, repeated or empty values, unknown arguments on
#   drain/metrics -> 400 with a JSON {"error":...} body, and the state is unchanged: not
#   paused afterwards (checked from idle), and from a paused scope with auto_resume=1h
#   the pause and its deadline stay as they were. POST drain -> 405 (Allow: GET, HEAD),
#   drain?scope=nope -> 404.
# - nginx time syntax is accepted: 500ms, 30s, 2m, 1h, 1m30s, a bare number (seconds),
#   24h; auto_resume=90 / 1m30s / 2m / 1h / 24h give the matching auto_resume_in_ms.
# Directives: intermission_max_time 0 / abc / -1s / 25h / 2d / 86401 / no argument /
# two arguments, intermission_max_held 0 / -5 / x / no argument, intermission_on_timeout
# maybe / no argument, intermission_bypass with no argument, and the directives at main
# level -> `nginx -t` fails and names the directive; valid values and every context
# (http, server, location) pass.
use strict;
use warnings;
use Test::More;
use Intermission::Test;

# ================================================================ directives

sub conf {
    my (%o) = @_;
    my $http = $o{http} // '';
    my $srv  = $o{server} // '';
    my $loc  = $o{location} // '';
    my $main = $o{main} // '';
    return <<"CONF";
$main
http {
    $http
    server {
        listen 127.0.0.1:%%PORT%%;
        $srv
        location / {
            intermission on;
            $loc
            proxy_pass http://127.0.0.1:%%T_PORT%%;
        }
        location /ctl/ {
            intermission_control;
        }
    }
}
CONF
}

my @bad_directives = (
    ['intermission_max_time 0',        'intermission_max_time',   location => 'intermission_max_time 0;'],
    ['intermission_max_time 0s',       'intermission_max_time',   location => 'intermission_max_time 0s;'],
    ['intermission_max_time abc',      'intermission_max_time',   location => 'intermission_max_time abc;'],
    ['intermission_max_time -1s',      'intermission_max_time',   location => 'intermission_max_time -1s;'],
    ['intermission_max_time 25h',      'intermission_max_time',   location => 'intermission_max_time 25h;'],
    ['intermission_max_time 2d',       'intermission_max_time',   location => 'intermission_max_time 2d;'],
    ['intermission_max_time 86401',    'intermission_max_time',   location => 'intermission_max_time 86401;'],
    ['intermission_max_time 1.5s',     'intermission_max_time',   location => 'intermission_max_time 1.5s;'],
    ['intermission_max_time (no arg)', 'intermission_max_time',   location => 'intermission_max_time;'],
    ['intermission_max_time 1s 2s',    'intermission_max_time',   location => 'intermission_max_time 1s 2s;'],
    ['intermission_max_time at http',  'intermission_max_time',   http => 'intermission_max_time abc;'],
    ['intermission_max_time at server','intermission_max_time',   server => 'intermission_max_time 0;'],
    ['intermission_max_held 0',        'intermission_max_held',   location => 'intermission_max_held 0;'],
    ['intermission_max_held -5',       'intermission_max_held',   location => 'intermission_max_held -5;'],
    ['intermission_max_held x',        'intermission_max_held',   location => 'intermission_max_held x;'],
    ['intermission_max_held 1.5',      'intermission_max_held',   location => 'intermission_max_held 1.5;'],
    ['intermission_max_held (no arg)', 'intermission_max_held',   location => 'intermission_max_held;'],
    ['intermission_max_held at http',  'intermission_max_held',   http => 'intermission_max_held 0;'],
    ['intermission_on_timeout maybe',  'intermission_on_timeout', location => 'intermission_on_timeout maybe;'],
    ['intermission_on_timeout (no arg)','intermission_on_timeout',location => 'intermission_on_timeout;'],
    ['intermission_on_timeout pass reject', 'intermission_on_timeout', location => 'intermission_on_timeout pass reject;'],
    ['intermission_on_timeout at server', 'intermission_on_timeout', server => 'intermission_on_timeout drop;'],
    ['intermission_bypass (no arg)',   'intermission_bypass',     location => 'intermission_bypass;'],
    ['intermission_bypass at http',    'intermission_bypass',     http => 'intermission_bypass;'],
    ['intermission_max_time at main',  'intermission_max_time',   main => 'intermission_max_time 1s;'],
    ['intermission_max_held at main',  'intermission_max_held',   main => 'intermission_max_held 3;'],
    ['intermission_on_timeout at main','intermission_on_timeout', main => 'intermission_on_timeout pass;'],
    ['intermission_bypass at main',    'intermission_bypass',     main => 'intermission_bypass $x;'],
    ['intermission_release_window 0',  'intermission_release_window', location => 'intermission_release_window 0;'],
    ['intermission_release_window -1', 'intermission_release_window', location => 'intermission_release_window -1;'],
    ['intermission_release_window x',  'intermission_release_window', location => 'intermission_release_window x;'],
    ['intermission_release_window 100001', 'intermission_release_window', location => 'intermission_release_window 100001;'],
    ['intermission_release_window on', 'intermission_release_window', location => 'intermission_release_window on;'],
    ['intermission_release_window 1 2', 'intermission_release_window', location => 'intermission_release_window 1 2;'],
    ['intermission_release_window twice', 'intermission_release_window', location => 'intermission_release_window 4; intermission_release_window 8;'],
    ['intermission_release_window at main', 'intermission_release_window', main => 'intermission_release_window 4;'],
);


my @good_directives = (
    ['max_time 500ms',         location => 'intermission_max_time 500ms;'],
    ['max_time 30s',           location => 'intermission_max_time 30s;'],
    ['max_time 2m',            location => 'intermission_max_time 2m;'],
    ['max_time 1h',            location => 'intermission_max_time 1h;'],
    ['max_time 1m30s',         location => 'intermission_max_time 1m30s;'],
    ['max_time "1h 30m" (as nginx writes it)', location => 'intermission_max_time "1h 30m";'],
    ['max_time 1d',            location => 'intermission_max_time 1d;'],
    ['max_time 45 (seconds)',  location => 'intermission_max_time 45;'],
    ['max_time 24h',           location => 'intermission_max_time 24h;'],
    ['max_time 86400',         location => 'intermission_max_time 86400;'],
    ['max_time at http',       http => 'intermission_max_time 10s;'],
    ['max_time at server',     server => 'intermission_max_time 10s;'],
    ['max_held 1',             location => 'intermission_max_held 1;'],
    ['max_held 100000',        location => 'intermission_max_held 100000;'],
    ['max_held at http',       http => 'intermission_max_held 50;'],
    ['max_held at server',     server => 'intermission_max_held 50;'],
    ['on_timeout pass',        location => 'intermission_on_timeout pass;'],
    ['on_timeout reject',      location => 'intermission_on_timeout reject;'],
    ['on_timeout at http',     http => 'intermission_on_timeout reject;'],
    ['on_timeout at server',   server => 'intermission_on_timeout reject;'],
    ['bypass one variable',    location => 'intermission_bypass $http_x_monitor;'],
    ['bypass two values',      location => 'intermission_bypass $arg_bypass $cookie_bypass;'],
    ['bypass literal',         location => 'intermission_bypass 1;'],
    ['bypass at http',         http => 'intermission_bypass $http_x_monitor;'],
    ['bypass at server',       server => 'intermission_bypass $http_x_monitor;'],
    ['release_window 1',       location => 'intermission_release_window 1;'],
    ['release_window 100000',  location => 'intermission_release_window 100000;'],
    ['release_window off',     location => 'intermission_release_window off;'],
    ['release_window at http', http => 'intermission_release_window 16;'],
    ['release_window at server', server => 'intermission_release_window off;'],
    ['all together',           http => 'intermission_max_time 5m; intermission_max_held 10; '
                                     . 'intermission_on_timeout reject; intermission_bypass $arg_b;',
                               location => 'intermission_max_time 1s; intermission_on_timeout pass;'],
);

check_directives(\&conf, bad => \@bad_directives, good => \@good_directives);

# ================================================================ control endpoint

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /other/ {
            intermission other;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

sub snapshot {
    my $j = ctl_status() or return 'status failed';
    return join ';', map { "$_->{name}:" . ($_->{paused} ? 1 : 0) . ':' . ($_->{auto_resume_at} // '-') }
                     sort { $a->{name} cmp $b->{name} } @{ $j->{scopes} || [] };
}

my @bad_control = (
    # method, command, args, status
    ['POST', 'enable', 'wait=drained&timeout=0',               400],
    ['POST', 'enable', 'wait=drained&timeout=0s',              400],
    ['POST', 'enable', 'wait=drained&timeout=-1s',             400],
    ['POST', 'enable', 'wait=drained&timeout=abc',             400],
    ['POST', 'enable', 'wait=drained&timeout=99999999999s',    400],
    ['POST', 'enable', 'wait=drained&timeout=25h',             400],
    ['POST', 'enable', 'wait=drained&timeout=1.5s',            400],
    ['POST', 'enable', 'wait=drained&timeout=',                400],
    ['POST', 'enable', 'wait=drained&timeout',                 400],
    ['POST', 'enable', 'wait=drained&timeout=1s&timeout=2s',   400],
    ['POST', 'enable', 'wait=foo',                             400],
    ['POST', 'enable', 'wait=',                                400],
    ['POST', 'enable', 'wait=drained&wait=drained',            400],
    ['POST', 'enable', 'timeout=1s',                           400],
    ['POST', 'enable', 'scope=default&timeout=1s',             400],
    ['POST', 'enable', 'auto_resume=0',                        400],
    ['POST', 'enable', 'auto_resume=0ms',                      400],
    ['POST', 'enable', 'auto_resume=-1s',                      400],
    ['POST', 'enable', 'auto_resume=abc',                      400],
    ['POST', 'enable', 'auto_resume=25h',                      400],
    ['POST', 'enable', 'auto_resume=99999999999s',             400],
    ['POST', 'enable', 'auto_resume=1.5s',                     400],
    ['POST', 'enable', 'auto_resume=',                         400],
    ['POST', 'enable', 'auto_resume=1s&auto_resume=2s',        400],
    ['POST', 'enable', 'scope=default&auto_resume=0',          400],
    ['POST', 'enable', 'scope=nope&auto_resume=1s',            404],
    ['POST', 'pause',  'auto_resume=abc',                      400],
    ['POST', 'disable', 'auto_resume=1s',                      400],
    ['POST', 'resume', 'auto_resume=1s',                       400],
    ['GET',  'drain',  'auto_resume=1s',                       400],
    ['GET',  'status', 'auto_resume=1s',                       400],
    ['GET',  'status', 'timeout=1s',                           400],
    ['GET',  'drain',  'timeout=0',                            400],
    ['GET',  'drain',  'timeout=-1s',                          400],
    ['GET',  'drain',  'timeout=abc',                          400],
    ['GET',  'drain',  'timeout=99999999999s',                 400],
    ['GET',  'drain',  'timeout=25h',                          400],
    ['GET',  'drain',  'timeout=',                             400],
    ['GET',  'drain',  'timeout=1s&timeout=2s',                400],
    ['GET',  'drain',  'wait=drained',                         400],
    ['GET',  'drain',  'foo=1',                                400],
    ['GET',  'drain',  'scope=bad!name',                       400],
    ['GET',  'drain',  'scope=nope',                           404],
    ['GET',  'metrics', 'foo=1',                               400],
    ['POST', 'drain',  undef,                                  405, 'GET,HEAD'],
    ['PUT',  'drain',  undef,                                  405, 'GET,HEAD'],
    ['POST', 'metrics', undef,                                 405],
);

sub allow_set { my ($v) = @_; join ',', sort map { uc } split /\s*,\s*/, ($v // '') }

sub run_bad {
    my ($tag, $expect) = @_;
    for my $e (@bad_control) {
        my ($m, $cmd, $args, $want, $allow) = @$e;
        my $name = "$tag: $m $cmd" . (defined $args ? "?$args" : '');
        my ($st, $h, $j, $body) = ctl($m, $cmd, $args);
        is($st, $want, "$name -> $want") or diag("body: " . ($body // ''));
        like($h && $h->{'content-type'} // '', qr{^application/json}, "$name: JSON content type");
        ok(ref $j eq 'HASH' && defined $j->{error} && length $j->{error}, "$name: {\"error\": ...}")
            or diag("body: " . ($body // ''));
        is(allow_set($h && $h->{allow}), $allow, "$name: Allow $allow") if $allow;
        is(snapshot(), $expect, "$name: state unchanged");
    }
}

my $idle = snapshot();
is($idle, 'default:0:-;other:0:-', 'idle: nothing paused, no deadline');
run_bad('idle', $idle);

# from a paused scope with a deadline: the pause and the deadline stay
{
    my ($st, undef, $j) = ctl('POST', 'enable', 'scope=default&auto_resume=1h');
    is($st, 200, 'default paused with auto_resume=1h');
    my $paused = snapshot();
    like($paused, qr/^default:1:\d{4}-.*;other:0:-$/, 'default paused with a deadline');
    run_bad('paused', $paused);
    is(scalar ctl('POST', 'disable'), 200, 'resumed');
    is(snapshot(), $idle, 'idle again');
}

# accepted time syntax
for my $t (qw(500ms 30s 2m 1h 1m30s 45 24h 86400)) {
    my ($st, undef, $j, $raw) = ctl('GET', 'drain', "timeout=$t");
    is($st, 200, "drain?timeout=$t: 200 (idle)") or diag($raw);
    ok($j && $j->{drained}, "drain?timeout=$t: drained");
}
for my $t (qw(1s 2m 1m30s)) {
    my ($st, undef, $j, $raw) = ctl('POST', 'enable', "wait=drained&timeout=$t");
    is($st, 200, "enable?wait=drained&timeout=$t: 200 (idle)") or diag($raw);
    ok($j && $j->{drained}, "enable?wait=drained&timeout=$t: drained");
    is(scalar ctl('POST', 'disable'), 200, 'resumed');
}
{
    my ($st, undef, $j, $raw) = ctl('POST', 'enable', 'wait=drained');
    is($st, 200, 'enable?wait=drained (default timeout): 200 (idle)') or diag($raw);
    is(scalar ctl('POST', 'disable'), 200, 'resumed');
}

my @auto = (
    ['90',    90_000],
    ['1m30s', 90_000],
    ['2m',    120_000],
    ['1h',    3_600_000],
    ['24h',   86_400_000],
    ['86400', 86_400_000],
);
for my $a (@auto) {
    my ($t, $ms) = @$a;
    my ($st, undef, $j, $raw) = ctl('POST', 'enable', "scope=default&auto_resume=$t");
    is($st, 200, "enable?auto_resume=$t: 200") or diag($raw);
    my $s = scope_status('default');
    my $in = $s && $s->{auto_resume_in_ms};
    ok(defined $in && $in <= $ms && $in > $ms - 5000, "auto_resume=$t: auto_resume_in_ms about $ms")
        or diag('auto_resume_in_ms ' . ($in // 'undef'));
    is(scalar ctl('POST', 'disable'), 200, 'resumed');
    $s = scope_status('default');
    ok($s && !$s->{paused} && !defined $s->{auto_resume_at}, 'not paused, no deadline');
}

is(snapshot(), $idle, 'idle at the end');
finish();
