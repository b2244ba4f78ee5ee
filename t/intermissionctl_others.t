#!/usr/bin/perl
# intermissionctl_others.t: one team's maintenance does not trample another's. Scopes
# "default" (/) and "vs05" (/vs05/); another operator has paused vs05 with a 10 minute
# dead-man switch (`pause --scope vs05 --auto-resume 10m`) and a request of vs05 is held.
# 1. A plain `pause` (every scope, no auto-resume): exit 0; vs05 keeps its auto-resume
#    deadline (the module keeps it on an enable without auto_resume); the warning (stderr,
#    and --json) names vs05 as paused already, with its auto-resume.
# 2. `run --auto-resume 2m -- COMMAND` without --scope: while COMMAND runs, default is paused
#    with the run's 2 minute deadline and vs05 still has its own 10 minutes; a warning names
#    vs05 and its deadline; at the end only default is resumed: vs05 is still paused, with
#    its deadline, its request still held; exit 0; --json lists vs05 in paused_by_others.
# 3. `run --scope vs05 -- true`: vs05 was paused by someone else: warned, not resumed.
# 4. `run -- true` when the scope was paused in an earlier status but is no longer (its owner
#    resumed it meanwhile) is ordinary: no warning.
use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /vs05/ {
            intermission vs05;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $E = 'http://127.0.0.1:' . port('CTL_PORT') . '/ctl/';
my $MIN = 60_000;

sub vs05_kept {
    my ($what) = @_;
    my $s = scope_status('vs05');
    ok($s && $s->{paused}, "$what: vs05 still paused");
    ok($s && defined $s->{auto_resume_in_ms} && $s->{auto_resume_in_ms} > 9 * $MIN,
       "$what: vs05 keeps its 10 minute auto-resume") or diag explain $s;
}

my ($rc, $out, $err) = intermissionctl('pause', '--endpoint', $E, '--scope', 'vs05', '--auto-resume', '10m');
is($rc, 0, 'the other operator paused vs05 for 10 minutes') or diag($err);
my $held = send_only($port, '/vs05/held');
ok(wait_held('vs05', 1), 'a request of vs05 is held');

# ---- 1. a plain pause of every scope
{
    ($rc, $out, $err) = intermissionctl('--json', 'pause', '--endpoint', $E);
    is($rc, 0, '1: pause (every scope): exit 0') or diag($err);
    like($err, qr/warning: \Q$E\E: pause: scope vs05 was paused already .*auto-resume in (?:9m\d\ds|10m00s)/,
         '1: the warning names vs05 and its auto-resume') or diag($err);
    vs05_kept('1');
    my $d = scope_status('default');
    ok($d && $d->{paused} && !defined $d->{auto_resume_at}, '1: default paused, without a deadline');
    my $j = json_ok('1', $out);
    my $others = $j->{endpoints}[0]{paused_by_others} || [];
    is_deeply([map { $_->{scope} } @$others], ['vs05'], '1: json: paused_by_others names vs05');
    ok(@$others && $others->[0]{auto_resume_in_ms} > 9 * $MIN, '1: json: ... with its deadline');
    ok(scalar(grep { $_->{message} =~ /vs05/ } @{ $j->{endpoints}[0]{warnings} || [] }),
       '1: json: the warning');
    ($rc) = intermissionctl('resume', '--endpoint', $E, '--scope', 'default');
    is($rc, 0, '1: default resumed again');
}

# ---- 2. run without --scope
{
    my $h = intermissionctl_bg('--json', 'run', '--endpoint', $E, '--auto-resume', '2m', '--',
                               gated_command('o2'));
    ok(gate_started('o2', 10), '2: COMMAND started');
    my $d = scope_status('default');
    ok($d && $d->{paused}, '2: default paused by the run');
    ok($d && defined $d->{auto_resume_in_ms} && $d->{auto_resume_in_ms} <= 2 * $MIN
       && $d->{auto_resume_in_ms} > $MIN, '2: ... with the run\'s 2 minute deadline') or diag explain $d;
    vs05_kept('2: while COMMAND runs');
    my $c = send_only($port, '/o2/held');
    ok(wait_held('default', 1), '2: a request of default held');
    gate_open('o2');
    my ($rc2, $out2) = bg_wait($h, 20);
    is($rc2, 0, '2: exit 0') or diag(bg_stderr($h));
    like(bg_stderr($h), qr/warning: \Q$E\E: pause: scope vs05 was paused already .*auto-resume in (?:9m\d\ds|10m00s).*not resume/,
         '2: the warning names vs05, its deadline, and that the run leaves it paused')
        or diag(bg_stderr($h));
    my ($st) = $c->read_response(10);
    is($st, 200, '2: the request of default answered at the resume');
    vs05_kept('2: after the run');
    ok(!$held->readable(0), '2: the request of vs05 still held');
    $d = scope_status('default');
    ok($d && !$d->{paused}, '2: default resumed');
    my $j = json_ok('2', $out2);
    my $e = $j->{endpoints}[0] || {};
    is_deeply([map { $_->{scope} } @{ $e->{paused_by_others} || [] }], ['vs05'],
              '2: json: paused_by_others');
    is_deeply($e->{resumed_scopes}, ['default'], '2: json: resumed_scopes is default only');
    $c->close;
}

# ---- 3. run --scope vs05 while its owner has it paused
{
    ($rc, $out, $err) = intermissionctl('run', '--endpoint', $E, '--scope', 'vs05', '--', 'true');
    is($rc, 0, '3: exit 0') or diag($err);
    like($err, qr/warning: .*scope vs05 was paused already/, '3: warned') or diag($err);
    vs05_kept('3');
    ok(!$held->readable(0), '3: the request of vs05 still held');
}

# ---- 4. its owner resumes it; a run is ordinary again
{
    ($rc, $out, $err) = intermissionctl('resume', '--endpoint', $E, '--scope', 'vs05');
    is($rc, 0, '4: the owner resumes vs05');
    my ($st) = $held->read_response(10);
    is($st, 200, '4: the request of vs05 answered');
    ($rc, $out, $err) = intermissionctl('run', '--endpoint', $E, '--', 'true');
    is($rc, 0, '4: run: exit 0');
    is($err, '', '4: no warning');
    my $j = ctl_status();
    ok($j && !grep({ $_->{paused} } @{ $j->{scopes} }), '4: nothing paused');
    $held->close;
}

finish();
