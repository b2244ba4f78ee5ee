#!/usr/bin/perl
# intermissionctl.t: `scripts/intermissionctl run` against one nginx (2 workers).
# 1. Success: a slow request is in flight when the run starts; run pauses, waits for it
#    (COMMAND starts only after it was answered), runs COMMAND, which waits while the test
#    stops the Perl backend (its port refuses), sends requests (held) and starts the
#    backend again; then run checks the backend (--check, answered before any held request
#    reaches it) and resumes: exit 0, every held request answered 200 and recorded by the
#    backend exactly once, the summary table names the endpoint, COMMAND's output and
#    INTERMISSION_ENDPOINTS pass through, nothing left paused.
# 2. COMMAND fails (exit 3 with requests held; and plain `false`): exit 1, the message names
#    the step, everything resumed, held requests answered 200.
# 3. The check fails (the URL answers 503, short --check-timeout): exit 1, it retried,
#    the message names the check, resumed, held requests answered.
# 4. SIGTERM (and SIGINT) to intermissionctl while COMMAND sleeps: COMMAND gets the signal,
#    everything is resumed, exit 130, held requests answered.
# 5. An endpoint that cannot be reached, a drain that times out: exit 1, resumed.
use strict;
use warnings;
use Test::More;
use JSON::PP ();
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
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $E = 'http://127.0.0.1:' . port('CTL_PORT') . '/ctl/';
my $BACKEND = 'http://127.0.0.1:' . backend_port();

sub count_uri {
    my ($uri) = @_;
    return scalar grep { $_->{uri} eq $uri } backend_log();
}

# every path answered 200 (responses from read_responses) and recorded exactly once
sub all_answered_once {
    my ($what, $paths, $resps) = @_;
    my $ok200 = grep { $_ && $_->[0] == 200 } @$resps;
    is($ok200, scalar @$paths, "$what: all " . @$paths . " answered 200");
    my @bad = grep { count_uri($_) != 1 } @$paths;
    ok(!@bad, "$what: each recorded by the backend exactly once")
        or diag("not exactly once: @bad");
}

sub none_paused {
    my ($what) = @_;
    my $j = ctl_status();
    ok($j && @{ $j->{scopes} } && !grep({ $_->{paused} } @{ $j->{scopes} }),
       "$what: nothing left paused") or diag explain $j;
}

sub wait_paused { wait_for(sub { my $s = scope_status('default'); $s && $s->{paused} }, 10) }

# ---- 1. success
{
    my $slow = send_only($port, '/t1/inflight?sleep=1500');
    ok(wait_inflight('default', 1), '1: a slow request in flight');
    my $h = intermissionctl_bg('run', '--endpoint', $E, '--check', "$BACKEND/health",
                               '--auto-resume', '2m', '--', gated_command('t1'));
    ok(wait_paused(), '1: paused');
    my @paths = map { "/t1/held-early/$_" } 1 .. 3;
    my @c = map { send_only($port, $_) } @paths;
    ok(wait_held('default', 3), '1: requests sent while it drains are held');
    ok(!$slow->readable(0), '1: the slow request is still running');
    ok(!-e prefix() . '/t1.started', '1: COMMAND not started while a request is in flight');

    ok(gate_started('t1', 10), '1: COMMAND started');
    ok($slow->readable(0), '1: ... after the in-flight request was answered');
    my ($sst) = $slow->read_response(1);
    is($sst, 200, '1: the in-flight request answered 200');

    my $bport = backend_port();
    stop_backend();
    ok(!IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $bport, Proto => 'tcp'),
       '1: backend stopped: its port refuses');
    my @paths2 = map { "/t1/held-late/$_" } 1 .. 3;
    push @c, map { send_only($port, $_) } @paths2;
    push @paths, @paths2;
    ok(wait_held('default', 6), '1: requests held while the backend is down');
    start_backend(port => $bport, keep_log => 1);
    my $t_go = time;
    gate_open('t1');

    my ($rc) = bg_wait($h, 20);
    is($rc, 0, '1: exit 0') or diag(bg_stderr($h));
    my @r = read_responses(10, @c);
    all_answered_once('1', \@paths, \@r);
    my @health = grep { $_->{uri} eq '/health' } backend_log();
    ok(@health >= 1, '1: the backend was checked');
    my ($first_held) = sort { $a <=> $b } map { $_->{time} } grep { $_->{uri} =~ m{^/t1/held} } backend_log();
    ok(@health && $first_held && $health[0]{time} >= $t_go && $health[0]{time} <= $first_held,
       '1: checked after COMMAND, before any held request went on');
    my $out = bg_output($h);
    like($out, qr/^endpoints=\Q$E\E$/m, '1: COMMAND saw INTERMISSION_ENDPOINTS');
    like($out, qr/^command t1 done$/m, "1: COMMAND's output passes through");
    like($out, qr/^ENDPOINT\s+RESULT\s+PAUSED FOR\s+HELD PEAK\s+RELEASED\s+REJECTED\s+TIMED OUT\s+ERRORS$/m,
         '1: summary table');
    like($out, qr/^\Q$E\E\s+resumed\s+\S+s\s+6\s+6\s+0\s+0\s+-$/m,
         '1: summary row: resumed, held peak 6, released 6, none rejected or timed out')
        or diag($out);
    is(bg_stderr($h), '', '1: nothing on stderr');
    none_paused('1');
    $_->close for @c, $slow;
}

# ---- 2. COMMAND fails
{
    my $h = intermissionctl_bg('run', '--endpoint', $E, '--', gated_command('t2', 3));
    ok(gate_started('t2', 10), '2: COMMAND started');
    my @paths = map { "/t2/held/$_" } 1 .. 3;
    my @c = map { send_only($port, $_) } @paths;
    ok(wait_held('default', 3), '2: requests held');
    gate_open('t2');
    my ($rc) = bg_wait($h, 20);
    is($rc, 1, '2: exit 1');
    like(bg_stderr($h), qr/run failed at step 'command': COMMAND exited with status 3/,
         '2: the message says COMMAND failed');
    my @r = read_responses(10, @c);
    all_answered_once('2', \@paths, \@r);
    none_paused('2');
    $_->close for @c;

    my ($rc2, $out2, $err2) = intermissionctl('run', '--endpoint', $E, '--', 'false');
    is($rc2, 1, '2: `-- false`: exit 1');
    like($err2, qr/COMMAND exited with status 1/, '2: `-- false`: message');
    like($out2, qr/^\Q$E\E\s+resumed\b/m, '2: `-- false`: summary says resumed');
    none_paused('2: `-- false`');

    my ($rc3, undef, $err3) = intermissionctl('run', '--endpoint', $E, '--',
                                              prefix() . '/no-such-command');
    is($rc3, 1, '2: a COMMAND that cannot be started: exit 1');
    like($err3, qr/cannot run .*no-such-command/, '2: ... message');
    none_paused('2: no such command');
}

# ---- 3. the check never answers 2xx
{
    my $h = intermissionctl_bg('run', '--endpoint', $E, '--check', "$BACKEND/health?status=503",
                               '--check-timeout', '1s', '--check-interval', '200ms',
                               '--', gated_command('t3'));
    ok(gate_started('t3', 10), '3: COMMAND started');
    my @paths = map { "/t3/held/$_" } 1 .. 2;
    my @c = map { send_only($port, $_) } @paths;
    ok(wait_held('default', 2), '3: requests held');
    gate_open('t3');
    my ($rc) = bg_wait($h, 20);
    is($rc, 1, '3: exit 1');
    like(bg_stderr($h),
         qr{run failed at step 'check': \Q$BACKEND\E/health\?status=503 not healthy .*HTTP 503}s,
         '3: the message names the check and its last answer') or diag(bg_stderr($h));
    ok(count_uri('/health?status=503') >= 2, '3: the check was retried');
    my @r = read_responses(10, @c);
    all_answered_once('3', \@paths, \@r);
    none_paused('3');
    $_->close for @c;

    my $closed = free_port();
    my ($rc2, undef, $err2) = intermissionctl('run', '--endpoint', $E, '--check',
                                              "http://127.0.0.1:$closed/", '--check-timeout', '700ms',
                                              '--', 'true');
    is($rc2, 1, '3: check of a closed port: exit 1');
    like($err2, qr/connection refused/, '3: ... message');
    none_paused('3: closed port');
}

# ---- 4. SIGTERM / SIGINT while COMMAND runs
for my $sig (qw(TERM INT)) {
    my $tag = "t4$sig";
    my @cmd = ('sh', '-c', 'echo $$ > "$1.started"; exec sleep 30', 'sh', prefix() . "/$tag");
    my $h = intermissionctl_bg('run', '--endpoint', $E, '--', @cmd);
    my $cpid = gate_started($tag, 10);
    ok($cpid, "4 $sig: COMMAND started");
    my @paths = map { "/$tag/held/$_" } 1 .. 3;
    my @c = map { send_only($port, $_) } @paths;
    ok(wait_held('default', 3), "4 $sig: requests held");
    kill $sig, $h->{pid};
    my ($rc) = bg_wait($h, 15);
    is($rc, 130, "4 $sig: exit 130");
    like(bg_stderr($h), qr/interrupted by SIG$sig/, "4 $sig: the message says so");
    ok(wait_for(sub { !kill 0, $cpid }, 5), "4 $sig: COMMAND ended too");
    my @r = read_responses(10, @c);
    all_answered_once("4 $sig", \@paths, \@r);
    none_paused("4 $sig");
    $_->close for @c;
}

# ---- 5. an endpoint that cannot be reached; a drain that times out
{
    my $closed = free_port();
    my ($rc, $out, $err) = intermissionctl('run', '--endpoint', $E,
                                           '--endpoint', "http://127.0.0.1:$closed/ctl/", '--', 'true');
    is($rc, 1, '5: unreachable endpoint: exit 1');
    like($err, qr{http://127\.0\.0\.1:$closed/ctl/: pause: connection refused},
         '5: ... the message names it and the step');
    like($out, qr/^\Q$E\E\s+resumed\b/m, '5: the reachable one was paused and resumed');
    none_paused('5: unreachable');

    my $slow = send_only($port, '/t5/slow?sleep=2500');
    ok(wait_inflight('default', 1), '5: a slow request in flight');
    my $h = intermissionctl_bg('--json', 'run', '--endpoint', $E, '--drain-timeout', '500ms', '--', 'true');
    ok(wait_paused(), '5: paused');
    my $held = send_only($port, '/t5/held');
    my ($drc) = bg_wait($h, 15);
    is($drc, 1, '5: drain timeout: exit 1');
    like(bg_stderr($h), qr/drain: drain timed out after 0\.5s: 1 request\(s\) still in flight/,
         '5: drain timeout: message');
    my $j = eval { JSON::PP->new->decode(bg_output($h)) };
    ok($j, '5: --json output parses') or diag(bg_output($h));
    is($j && $j->{failed_step}, 'drain', '5: json: failed_step drain');
    ok($j && !defined $j->{run}{exit_status}, '5: json: COMMAND never ran');
    ok($j && $j->{endpoints}[0]{resumed}, '5: json: resumed');
    my @r = read_responses(10, $held, $slow);
    all_answered_once('5: drain timeout', ['/t5/held', '/t5/slow?sleep=2500'], \@r);
    none_paused('5: drain timeout');
    $_->close for $held, $slow;
}

finish();
