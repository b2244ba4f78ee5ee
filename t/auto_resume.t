#!/usr/bin/perl
# auto_resume.t: `POST enable?auto_resume=T` (2 workers, reuseport, so held requests sit
# in both workers).
# - Not set: status shows "auto_resume_at":null and "auto_resume_in_ms":null.
# - enable?auto_resume=1s: the pause answer's scope entry and status show auto_resume_at
#   (RFC 3339, about now + 1 s) and auto_resume_in_ms (0..1000); other scopes are not
#   affected. Nobody asks for a resume, yet the held requests are answered 200 after about
#   1 s (not before 0.8 s), reach the backend, status shows not paused with both fields
#   null, released grew by the number held, and the error log has an [error] line with
#   "auto-resumed".
# - A resume before the deadline cancels it: pausing again without auto_resume, the scope
#   stays paused (request still held) past the old deadline, no new "auto-resumed" line.
# - A new enable replaces it: auto_resume=1s then auto_resume=3s resumes at the new
#   deadline only (still paused at 1.7 s, resumed by ~3 s); auto_resume=1s on one scope
#   then a plain enable of every scope keeps that scope's deadline (it resumes at it; the
#   scope the plain enable paused has none and stays paused).
# - auto_resume=1s on one scope resumes only that scope; enable of all scopes with
#   auto_resume=1s resumes them all.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /beta/ {
            intermission beta;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $AUTO_RE = qr/auto-resumed/;

sub auto_lines { scalar(error_log_lines($AUTO_RE)) }

sub entry {
    my ($j, $name) = @_;
    my ($e) = grep { $_->{name} eq $name } @{ ($j && $j->{scopes}) || [] };
    return $e;
}

sub hold {
    my ($path) = @_;
    my $c = http_connect($port);
    $c->send_request(path => $path, keepalive => 0);
    return $c;
}

sub sleep_until { my ($t) = @_; my $d = $t - time; sleep $d if $d > 0 }

# ---- not set
{
    my ($st, undef, $j, $raw) = ctl('GET', 'status');
    is($st, 200, 'status');
    my $d = entry($j, 'default');
    ok($d && exists $d->{auto_resume_at} && !defined $d->{auto_resume_at}, 'auto_resume_at null when not set');
    ok($d && exists $d->{auto_resume_in_ms} && !defined $d->{auto_resume_in_ms}, 'auto_resume_in_ms null when not set');
    like($raw, qr/"auto_resume_at"\s*:\s*null/, '"auto_resume_at":null in the JSON');
}

# ---- it fires
my $released0 = scope_status('default')->{counters}{released};
my $nauto;    # "auto-resumed" lines so far
{
    my $t0 = time;
    my ($st, undef, $j, $raw) = ctl('POST', 'enable', 'scope=default&auto_resume=1s');
    is($st, 200, 'enable?auto_resume=1s: 200') or diag($raw);
    my $e = entry($j, 'default');
    ok($e && $e->{paused}, 'pause answer: default paused');
    my $at = rfc3339_epoch($e && $e->{auto_resume_at});
    ok(defined $at, 'pause answer: auto_resume_at is RFC 3339') or diag($raw);
    ok(defined $at && abs($at - ($t0 + 1)) < 1, 'pause answer: auto_resume_at about now + 1 s')
        or diag("auto_resume_at " . ($at // 'undef') . " vs now+1 " . ($t0 + 1));

    my $s = scope_status('default');
    ok($s && $s->{paused}, 'status: paused');
    is($s && $s->{auto_resume_at}, $e && $e->{auto_resume_at}, 'status: same auto_resume_at');
    ok($s && defined $s->{auto_resume_in_ms} && $s->{auto_resume_in_ms} >= 0 && $s->{auto_resume_in_ms} <= 1000,
       'status: auto_resume_in_ms within 0..1000') or diag explain $s;
    my $b = scope_status('beta');
    ok($b && !$b->{paused} && !defined $b->{auto_resume_at}, 'beta: not paused, no auto_resume');

    my @c = map { hold("/auto/$_") } 1 .. 4;
    ok(wait_held('default', 4), 'four requests held');
    my @r = read_responses(5, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 4, 'all four answered 200 without a resume request');
    is(scalar(grep { $_ && $_->[3] >= $t0 + 0.8 } @r), 4, 'none answered before the deadline');
    is(scalar(grep { $_ && $_->[3] <= $t0 + 4 } @r), 4, 'all answered within a few seconds of the deadline');
    my @log = grep { $_->{uri} =~ m{^/auto/} } backend_log();
    is(scalar @log, 4, 'all four reached the backend');

    $s = scope_status('default');
    ok($s && !$s->{paused}, 'status: not paused after the auto resume');
    ok($s && !defined $s->{auto_resume_at} && !defined $s->{auto_resume_in_ms}, 'status: auto_resume fields null again');
    ok($s && !defined $s->{paused_since}, 'status: paused_since null');
    is($s && $s->{counters}{released} - $released0, 4, 'counters.released grew by 4');
    ok(wait_for(sub { auto_lines() >= 1 }), 'error log: an "auto-resumed" line');
    like((error_log_lines($AUTO_RE))[0] // '', qr/\[error\]/, '... at level error, which Debian logs');
    $_->close for @c;
    sleep 0.2;
    $nauto = auto_lines();

    my ($gst) = http_get($port, '/after-auto');
    is($gst, 200, 'new requests pass after the auto resume');
}

# ---- a resume before the deadline cancels it
{
    my $t0 = time;
    is(scalar ctl('POST', 'enable', 'auto_resume=1s'), 200, 'enable?auto_resume=1s');
    my ($st, undef, $j) = ctl('POST', 'disable');
    is($st, 200, 'resume before the deadline');
    my $s = scope_status('default');
    ok($s && !defined $s->{auto_resume_at}, 'status: auto_resume_at null after the resume');
    ($st, undef, $j) = ctl('POST', 'enable');
    is($st, 200, 'paused again without auto_resume');
    my $e = entry($j, 'default');
    ok($e && !defined $e->{auto_resume_at}, 'pause answer: auto_resume_at null');
    my $c = hold('/cancel/1');
    ok(wait_held('default', 1), 'a request held');
    sleep_until($t0 + 1.8);
    $s = scope_status('default');
    ok($s && $s->{paused}, 'still paused past the old deadline');
    is($s && $s->{held}, 1, 'request still held past the old deadline');
    ok(!$c->readable(0), 'request not answered');
    is(auto_lines(), $nauto, 'no new "auto-resumed" line');
    is(scalar ctl('POST', 'disable'), 200, 'resume');
    my ($cst) = $c->read_response(5);
    is($cst, 200, 'held request answered after the resume');
    $c->close;
}

# ---- a new enable with auto_resume replaces the deadline
{
    my $t1 = time;
    is(scalar ctl('POST', 'enable', 'auto_resume=1s'), 200, 'enable?auto_resume=1s');
    my $t2 = time;
    my ($st, undef, $j, $raw) = ctl('POST', 'enable', 'auto_resume=3s');
    is($st, 200, 'enable?auto_resume=3s on the paused scope');
    my $e = entry($j, 'default');
    my $at = rfc3339_epoch($e && $e->{auto_resume_at});
    ok(defined $at && abs($at - ($t2 + 3)) < 1, 'pause answer: the new deadline (now + 3 s)') or diag($raw);
    my $s = scope_status('default');
    ok($s && ($s->{auto_resume_in_ms} // 0) > 1500, 'status: auto_resume_in_ms > 1500') or diag explain $s;
    my $c = hold('/replace/1');
    ok(wait_held('default', 1), 'a request held');
    sleep_until($t1 + 1.7);
    $s = scope_status('default');
    ok($s && $s->{paused}, 'still paused past the first deadline');
    ok(!$c->readable(0), 'request still held past the first deadline');
    is(auto_lines(), $nauto, 'no "auto-resumed" line at the first deadline');
    my @r = read_responses(5, $c);
    is($r[0] && $r[0][0], 200, 'request answered at the new deadline');
    ok($r[0] && $r[0][3] >= $t2 + 2.8, '... not before it');
    $s = scope_status('default');
    ok($s && !$s->{paused}, 'not paused after the new deadline');
    ok(wait_for(sub { auto_lines() > $nauto }), 'a new "auto-resumed" line');
    $c->close;
    sleep 0.2;
    $nauto = auto_lines();
}

# ---- a new enable without auto_resume keeps the deadline (someone else's dead-man switch)
{
    my $t1 = time;
    is(scalar ctl('POST', 'enable', 'scope=default&auto_resume=1s'), 200, 'enable?scope=default&auto_resume=1s');
    my ($st, undef, $j) = ctl('POST', 'enable');
    is($st, 200, 'enable of every scope, without auto_resume');
    my $e = entry($j, 'default');
    ok($e && !$e->{changed}, 'pause answer: default was paused already');
    my $at = rfc3339_epoch($e && $e->{auto_resume_at});
    ok(defined $at && abs($at - ($t1 + 1)) < 0.5, 'pause answer: default keeps its deadline')
        or diag explain $e;
    my $b = entry($j, 'beta');
    ok($b && $b->{changed} && !defined $b->{auto_resume_at}, 'pause answer: beta paused, no deadline');
    my $s = scope_status('default');
    ok($s && defined $s->{auto_resume_in_ms} && $s->{auto_resume_in_ms} <= 1000,
       'status: default still has its deadline') or diag explain $s;
    my $c = hold('/keepdeadline/1');
    my $cb = hold('/beta/keepdeadline/2');
    ok(wait_held(undef, 2), 'a request held in each scope');
    my @r = read_responses(5, $c);
    is($r[0] && $r[0][0], 200, 'default: the request answered at the kept deadline');
    ok($r[0] && $r[0][3] >= $t1 + 0.8, '... not before it');
    ok(wait_for(sub { auto_lines() > $nauto }), 'a new "auto-resumed" line');
    $s = scope_status('beta');
    ok($s && $s->{paused}, 'beta still paused (it has no deadline)');
    ok(!$cb->readable(0), 'beta: its request still held');
    is(scalar ctl('POST', 'disable'), 200, 'resume');
    my ($cst) = $cb->read_response(5);
    is($cst, 200, 'beta: held request answered after the resume');
    $_->close for $c, $cb;
    sleep 0.2;
    $nauto = auto_lines();
}

# ---- per scope, and all scopes
{
    is(scalar ctl('POST', 'enable', 'scope=default'), 200, 'default paused (no deadline)');
    is(scalar ctl('POST', 'enable', 'scope=beta&auto_resume=1s'), 200, 'beta paused with auto_resume=1s');
    my $s = scope_status('default');
    ok($s && !defined $s->{auto_resume_at}, 'default has no deadline');
    my $cd = hold('/scoped/default');
    my $cb = hold('/beta/scoped');
    ok(wait_held(undef, 2), 'one request held in each scope');
    my @r = read_responses(5, $cb);
    is($r[0] && $r[0][0], 200, 'beta request answered at beta\'s deadline');
    $s = scope_status('beta');
    ok($s && !$s->{paused}, 'beta resumed');
    $s = scope_status('default');
    ok($s && $s->{paused}, 'default still paused');
    ok(!$cd->readable(0.2), 'default request still held');
    ok(wait_for(sub { auto_lines() > $nauto }), 'a new "auto-resumed" line for beta');
    like(join("\n", (error_log_lines($AUTO_RE))[$nauto .. auto_lines() - 1]), qr/beta/,
         '... naming the scope beta');
    sleep 0.2;
    $nauto = auto_lines();
    is(scalar ctl('POST', 'disable', 'scope=default'), 200, 'default resumed');
    my ($st) = $cd->read_response(5);
    is($st, 200, 'default request answered');

    my $t0 = time;
    my ($est, undef, $j) = ctl('POST', 'enable', 'auto_resume=1s');
    is($est, 200, 'enable (all scopes) with auto_resume=1s');
    is(scalar(grep { defined $_->{auto_resume_at} } @{ ($j && $j->{scopes}) || [] }), 2,
       'pause answer: both scopes have auto_resume_at');
    my @c = (hold('/all/1'), hold('/beta/all/2'));
    ok(wait_held(undef, 2), 'held in both scopes');
    @r = read_responses(5, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'both answered after the deadline');
    ok(wait_for(sub { my $j = ctl_status(); $j && !grep { $_->{paused} } @{ $j->{scopes} } }),
       'no scope paused afterwards');
    ok(wait_for(sub { auto_lines() > $nauto }), 'auto-resumed lines for them');
    $_->close for @c, $cd, $cb;
}

finish();
