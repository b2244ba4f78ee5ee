#!/usr/bin/perl
# intermissionctl_progress.t: while COMMAND runs, `intermissionctl run` shows progress (held,
# oldest held, in flight, per endpoint) without flooding the control endpoint with status
# requests. Not on a terminal (the test's pipes): plain lines.
# 1. The default pace off a terminal (a line and a status poll every 10 s): a request in
#    flight makes the drain wait while three requests get held; COMMAND then runs ~3 s.
#    The output has a progress line from the start of COMMAND naming the endpoint with
#    "held 3", the oldest held age and "in flight 0"; the access log has only a handful of
#    intermissionctl's status requests over the whole run (it used to poll 4 times a
#    second).
# 2. --progress-interval 1s: COMMAND runs ~4 s: several progress lines, about one a
#    second (not more than the time allows), and status requests bounded the same way.
# 3. --progress-interval below 1s is a usage error (exit 2).
use strict;
use warnings;
use Test::More;
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

# intermissionctl's status requests in nginx's access log so far (not the harness's own)
sub ctl_status_requests {
    scalar grep { m{"GET /ctl/status\S* HTTP/1\.1"} && /intermissionctl\// } file_lines('access.log');
}

# ---- 1. the default pace off a terminal
{
    my $slow = send_only($port, '/p1/slow?sleep=1500');
    ok(wait_inflight('default', 1), '1: a slow request in flight');
    my $n0 = ctl_status_requests();
    my $t0 = time;
    my $h = intermissionctl_bg('run', '--endpoint', $E, '--', gated_command('p1'));
    ok(wait_for(sub { my $s = scope_status('default'); $s && $s->{paused} }, 10), '1: paused');
    my @c = map { send_only($port, "/p1/held/$_") } 1 .. 3;
    ok(wait_held('default', 3), '1: three requests held while it drains');
    ok(gate_started('p1', 10), '1: COMMAND started');
    sleep 3;
    gate_open('p1');
    my ($rc, $out) = bg_wait($h, 20);
    my $took = time - $t0;
    is($rc, 0, '1: exit 0') or diag(bg_stderr($h));
    my @lines = grep { /COMMAND running/ } split /\n/, $out;
    ok(@lines >= 1, '1: a progress line while COMMAND runs') or diag($out);
    like($lines[0] // '', qr/\Q$E\E: held 3, oldest held \d+(?:\.\d)?s, in flight 0\b/,
         '1: ... from its start: the endpoint, held 3, the oldest held, in flight 0');
    ok(@lines <= 2, '1: ... not more than one per 10 s (and the first)') or diag($out);
    my $n = ctl_status_requests() - $n0;
    ok($n >= 2 && $n <= 7, "1: $n status requests in ${\ sprintf('%.1f', $took)} s (a handful)")
        or diag("$n status requests");
    my @r = read_responses(10, @c, $slow);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 4, '1: every request answered 200');
    $_->close for @c, $slow;
}

# ---- 2. --progress-interval 1s
{
    my $n0 = ctl_status_requests();
    my $h = intermissionctl_bg('run', '--endpoint', $E, '--progress-interval', '1s', '--',
                               gated_command('p2'));
    ok(gate_started('p2', 10), '2: COMMAND started');
    my $t0 = time;
    my $c = send_only($port, '/p2/held');
    ok(wait_held('default', 1), '2: a request held');
    sleep 4;
    gate_open('p2');
    my ($rc, $out) = bg_wait($h, 20);
    my $took = time - $t0;
    is($rc, 0, '2: exit 0') or diag(bg_stderr($h));
    my @lines = grep { /COMMAND running/ } split /\n/, $out;
    ok(@lines >= 3, '2: progress lines about every second (' . scalar(@lines) . ')') or diag($out);
    ok(@lines <= $took + 2, '2: ... not more often') or diag($out);
    ok(scalar(grep { /\Q$E\E: held 1, oldest held \d+(?:\.\d)?s, in flight 0\b/ } @lines),
       '2: they show the held request') or diag($out);
    my $n = ctl_status_requests() - $n0;
    ok($n <= $took + 6, "2: $n status requests in ${\ sprintf('%.1f', $took)} s: about one a second")
        or diag("$n status requests");
    my ($st) = $c->read_response(10);
    is($st, 200, '2: the held request answered 200');
    $c->close;
}

# ---- 3. usage
{
    my ($rc, undef, $err) = intermissionctl('run', '--endpoint', $E, '--progress-interval', '200ms',
                                            '--', 'true');
    is($rc, 2, '3: --progress-interval 200ms: usage error');
    like($err, qr/--progress-interval/, '3: ... the message names the option');
    my $s = scope_status('default');
    ok($s && !$s->{paused}, 'nothing left paused');
}

finish();
