#!/usr/bin/perl
# intermissionctl_drain.t: what `intermissionctl run` and `drain` do and say while they wait
# for the drain, and when it times out.
# 1. --on-drain-timeout continue (real nginx): a slow request is still in flight at
#    --drain-timeout 500ms: run warns (naming the drain timeout) and goes on with COMMAND
#    while the request is still running; held requests are released at the end; exit 3
#    (requests were in flight while COMMAND ran); --json: drained false.
# 2. --on-drain-timeout fail (the default, here explicit): exit 1, COMMAND never runs,
#    everything resumed. A bad value is a usage error.
# 3. The blockers (against a fake control endpoint that answers as the module documents:
#    status and drain answers with per-scope "upgraded", "streams" and "blockers", the
#    oldest requests a drain waits for): while run waits for the drain it polls status
#    every ~2 s and prints the blockers when they change, once each ("waiting for 1
#    request(s) in flight: GET /download (12 s, worker 4321)", then 2 when a second one
#    appears); the drain timeout's warning names them; the summary says what the drain
#    did not wait for ("not waited for: 2 upgraded, 1 stream"), --json carries them.
#    `drain` prints them too, and its timeout error names them.
use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);
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

# ---- 1. continue
{
    my $slow = send_only($port, '/d1/slow?sleep=2500');
    ok(wait_inflight('default', 1), '1: a slow request in flight');
    my $h = intermissionctl_bg('--json', 'run', '--endpoint', $E, '--drain-timeout', '500ms',
                               '--on-drain-timeout', 'continue', '--', gated_command('d1'));
    ok(gate_started('d1', 10), '1: COMMAND started after the drain timeout');
    ok(!$slow->readable(0), '1: ... while the slow request is still in flight');
    my $c = send_only($port, '/d1/held');
    ok(wait_held('default', 1), '1: a request held while COMMAND runs');
    gate_open('d1');
    my ($rc, $out) = bg_wait($h, 20);
    is($rc, 3, '1: exit 3: requests were in flight while COMMAND ran') or diag(bg_stderr($h));
    like(bg_stderr($h),
         qr/warning: \Q$E\E: drain: drain timed out after 0\.5s: 1 request\(s\) still in flight.*going on with COMMAND \(--on-drain-timeout continue\)/,
         '1: the warning') or diag(bg_stderr($h));
    my $j = json_ok('1', $out);
    my $e = $j->{endpoints}[0] || {};
    ok(defined $e->{drained} && !$e->{drained}, '1: json: drained false');
    is($j->{run} && $j->{run}{exit_status}, 0, '1: json: COMMAND ran, exit status 0');
    ok($e->{resumed}, '1: json: resumed');
    my @r = read_responses(10, $c, $slow);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, '1: the held and the slow request answered 200');
    $_->close for $c, $slow;
    not_paused('1');
}

# ---- 2. fail
{
    my $slow = send_only($port, '/d2/slow?sleep=2000');
    ok(wait_inflight('default', 1), '2: a slow request in flight');
    my ($rc, $out, $err) = intermissionctl('run', '--endpoint', $E, '--drain-timeout', '500ms',
                                           '--on-drain-timeout', 'fail', '--', gated_command('d2'));
    is($rc, 1, '2: --on-drain-timeout fail: exit 1');
    like($err, qr/run failed at step 'drain'/, '2: the message names the drain');
    ok(!-e prefix() . '/d2.started', '2: COMMAND never ran');
    my ($st) = $slow->read_response(10);
    is($st, 200, '2: the slow request answered');
    $slow->close;
    not_paused('2');

    ($rc, undef, $err) = intermissionctl('run', '--endpoint', $E, '--on-drain-timeout', 'maybe',
                                         '--', 'true');
    is($rc, 2, '2: a bad --on-drain-timeout: usage error');
    like($err, qr/--on-drain-timeout/, '2: ... naming the option');
    my ($hrc, $hout) = intermissionctl('run', '--help');
    like($hout, qr/--on-drain-timeout \{fail,continue\}/, 'run --help documents --on-drain-timeout');
}

# ---- 3. blockers, against a fake control endpoint
my $fdir = prefix() . '/fake';
mkdir $fdir;
my $fsrv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
                                 Listen => 64, ReuseAddr => 1) or die "fake: $!";
my $F = 'http://127.0.0.1:' . $fsrv->sockport . '/fake/';
my $fpid = fork;
die "fork: $!" unless defined $fpid;
if (!$fpid) {
    alarm 0;
    $SIG{CHLD} = 'IGNORE';
    my $parent = getppid();
    while (1) {
        POSIX::_exit(0) if getppid() != $parent;
        my $c = $fsrv->accept or next;
        my $k = fork;
        if (defined $k && $k == 0) { fake_answer($c); POSIX::_exit(0) }
        close $c;
    }
}
close $fsrv;

sub fake_blockers {
    my $pt = (read_file_text("$fdir/paused") // '') =~ /^([\d.]+)/ ? $1 : undef;
    my $t = defined $pt ? time - $pt : 100;
    my @b = ({ method => 'GET', path => '/download', age_ms => int(12_000 + 1000 * $t), pid => 4321 });
    push @b, { method => 'POST', path => '/upload', age_ms => int(1500 + 1000 * ($t - 3)), pid => 4322 }
        if $t >= 3;
    return @b;
}

sub fake_answer {
    my ($c) = @_;
    my $head = '';
    while ($head !~ /\r\n\r\n/) {
        my $n = sysread($c, my $buf, 4096);
        return unless $n;
        $head .= $buf;
    }
    my ($method, $uri) = $head =~ m{^(\S+) (\S+)} or return;
    my ($cmd, $q) = $uri =~ m{^/fake/(\w+)(?:\?(.*))?$} or return;
    my %q = map { split /=/, $_, 2 } split /&/, $q // '';
    my $json = JSON::PP->new->canonical;
    my ($st, $doc) = (200, undef);
    my @b = fake_blockers();
    my %figures = (inflight => scalar @b, upgraded => 2, streams => 1, blockers => \@b);
    if ($cmd eq 'status') {
        my $paused = -e "$fdir/paused" ? JSON::PP::true : JSON::PP::false;
        $doc = { scopes => [{ name => 'default', paused => $paused, held => 0, oldest_held_ms => undef,
                              auto_resume_at => undef, auto_resume_in_ms => undef, %figures,
                              counters => { map { $_ => 0 } qw(held released aborted timed_out rejected) } }] };
    } elsif ($cmd eq 'pause' || $cmd eq 'enable') {
        write_file('fake/paused', sprintf("%.3f\n", time));
        $doc = { action => 'pause', scopes => [{ name => 'default', paused => JSON::PP::true,
                                                 changed => JSON::PP::true, held => 0,
                                                 auto_resume_at => undef, auto_resume_in_ms => undef }] };
    } elsif ($cmd eq 'resume' || $cmd eq 'disable') {
        unlink "$fdir/paused";
        $doc = { action => 'resume', scopes => [{ name => 'default', paused => JSON::PP::false,
                                                  changed => JSON::PP::true, released => 0 }] };
    } elsif ($cmd eq 'drain') {
        my ($n, $u) = ($q{timeout} // '30s') =~ /^(\d+)(ms|s)$/;
        my $secs = $u && $u eq 'ms' ? $n / 1000 : $n;
        sleep $secs;
        @b = fake_blockers();
        $st = 503;
        $doc = { drained => JSON::PP::false, waited_ms => int($secs * 1000), inflight => scalar @b,
                 error => 'drain timed out',
                 scopes => [{ name => 'default', inflight => scalar @b, upgraded => 2, streams => 1,
                              blockers => \@b }] };
    } else {
        $st = 404;
        $doc = { error => 'unknown command' };
    }
    my $body = $json->encode($doc) . "\n";
    syswrite $c, "HTTP/1.1 $st X\r\nContent-Type: application/json\r\nContent-Length: "
                 . length($body) . "\r\nConnection: close\r\n\r\n$body";
}

{
    my ($rc, $out, $err) = intermissionctl('run', '--endpoint', $F, '--drain-timeout', '5s',
                                           '--on-drain-timeout', 'continue', '--', 'true');
    is($rc, 3, '3: run against the fake endpoint: the drain timed out, exit 3') or diag($err);
    my @one = $out =~ m{^(intermissionctl: \Q$F\E: waiting for 1 request\(s\) in flight: GET /download \(1\d s, worker 4321\))$}mg;
    is(scalar @one, 1, '3: the first blocker printed once (status is polled more often)') or diag($out);
    my @two = $out =~ m{^(intermissionctl: \Q$F\E: waiting for 2 request\(s\) in flight: GET /download \(1\d s, worker 4321\), POST /upload \(\d s, worker 4322\))$}mg;
    is(scalar @two, 1, '3: a second blocker: printed once more, with both') or diag($out);
    like($err, qr{drain timed out after 5\.0s: 2 request\(s\) still in flight: GET /download \(1\d s, worker 4321\), POST /upload \(\d s, worker 4322\).*going on with COMMAND},
         '3: the drain timeout names the blockers') or diag($err);
    like($out, qr/^\Q$F\E: not waited for: 2 upgraded, 1 stream$/m, '3: the summary: not waited for')
        or diag($out);

    ($rc, $out, $err) = intermissionctl('--json', 'run', '--endpoint', $F, '--drain-timeout', '1s',
                                        '--on-drain-timeout', 'continue', '--', 'true');
    my $j = json_ok('3', $out);
    my $e = $j->{endpoints}[0] || {};
    is($e->{upgraded}, 2, '3: json: upgraded 2');
    is($e->{streams}, 1, '3: json: streams 1');
    is_deeply([map { $_->{path} } @{ $e->{blockers} || [] }], ['/download'], '3: json: blockers');

    ($rc, $out, $err) = intermissionctl('drain', '--endpoint', $F, '--timeout', '3s');
    is($rc, 1, '3: drain against the fake endpoint: exit 1');
    like($out, qr{^intermissionctl: \Q$F\E: waiting for 2 request\(s\) in flight: GET /download \([^)]+, worker 4321\), POST /upload}m,
         '3: drain prints the blockers while it waits') or diag($out);
    like($err, qr{\Q$F\E: drain: timed out after 3\.0s: 2 request\(s\) still in flight: GET /download .*worker 4321.*POST /upload .*worker 4322},
         '3: its timeout error names them') or diag($err);
    like($out, qr/^\Q$F\E: not waited for: 2 upgraded, 1 stream$/m, '3: drain: not waited for');
}

kill 'TERM', $fpid;
waitpid($fpid, 0);

finish();
