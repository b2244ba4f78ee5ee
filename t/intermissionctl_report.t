#!/usr/bin/perl
# intermissionctl_report.t: `intermissionctl run` reports what users got during the
# maintenance, from the module's per-scope counters (rejected, timed_out), as deltas over
# the maintenance.
# 1. A clean run (requests held, released at the resume): exit 0; the summary has REJECTED
#    and TIMED OUT columns, both 0; --json carries rejected 0, timed_out 0.
# 2. intermission_max_time 1s: while COMMAND runs, three requests of a location with
#    `intermission_on_timeout reject` are answered 503, three of a location with `pass`
#    go on to the backend mid-maintenance: exit 3 (its own exit status, documented in
#    --help), the summary row says REJECTED 3, TIMED OUT 6 (a rejected timeout counts in
#    both), stderr says users saw the maintenance; --json: exit_code 3, outcome
#    users_affected, rejected 3, timed_out 6 (and the counters' deltas).
# 3. A later clean run counts only its own maintenance (deltas, not totals): exit 0, 0 and 0.
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
        location /pass/ {
            intermission on;
            intermission_max_time 1s;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /reject/ {
            intermission on;
            intermission_max_time 1s;
            intermission_on_timeout reject;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $E = 'http://127.0.0.1:' . port('CTL_PORT') . '/ctl/';

my $HEADER = qr/^ENDPOINT\s+RESULT\s+PAUSED FOR\s+HELD PEAK\s+RELEASED\s+REJECTED\s+TIMED OUT\s+ERRORS$/m;

# ---- 1. a clean run
{
    my $h = intermissionctl_bg('run', '--endpoint', $E, '--', gated_command('r1'));
    ok(gate_started('r1', 10), '1: COMMAND started');
    my @c = map { send_only($port, "/r1/$_") } 1 .. 2;
    ok(wait_held('default', 2), '1: two requests held');
    gate_open('r1');
    my ($rc, $out) = bg_wait($h, 20);
    is($rc, 0, '1: exit 0') or diag(bg_stderr($h));
    like($out, $HEADER, '1: the summary has REJECTED and TIMED OUT columns');
    like($out, qr/^\Q$E\E\s+resumed\s+\S+s\s+2\s+2\s+0\s+0\s+-$/m,
         '1: summary row: released 2, rejected 0, timed out 0') or diag($out);
    my @r = read_responses(10, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, '1: held requests answered 200');
    $_->close for @c;

    my ($jrc, $jout) = intermissionctl('--json', 'run', '--endpoint', $E, '--', 'true');
    is($jrc, 0, '1: --json: exit 0');
    my $j = json_ok('1', $jout);
    is($j->{endpoints}[0]{rejected}, 0, '1: json: rejected 0');
    is($j->{endpoints}[0]{timed_out}, 0, '1: json: timed_out 0');
    not_paused('1');
}

# ---- 2. users got 503s, requests went to the backend mid-maintenance
{
    my $h = intermissionctl_bg('--json', 'run', '--endpoint', $E, '--', gated_command('r2'));
    ok(gate_started('r2', 10), '2: COMMAND started');
    my @rej = map { send_only($port, "/reject/r2/$_") } 1 .. 3;
    my @pass = map { send_only($port, "/pass/r2/$_") } 1 .. 3;
    my @r = read_responses(10, @rej, @pass);
    is(scalar(grep { $_ && $_->[0] == 503 } @r[0 .. 2]), 3, '2: three rejected with 503 at max_time');
    is(scalar(grep { $_ && $_->[0] == 200 } @r[3 .. 5]), 3, '2: three passed on at max_time');
    is(scalar(grep { $_->{uri} =~ m{^/pass/r2/} } backend_log()), 3,
       '2: ... and they reached the backend while COMMAND ran');
    ok(scope_status('default')->{paused}, '2: still paused');
    gate_open('r2');
    my ($rc, $out) = bg_wait($h, 20);
    is($rc, 3, '2: exit 3: users saw the maintenance') or diag(bg_stderr($h));
    like(bg_stderr($h), qr/users saw the maintenance.*3 rejected.*6 timed out/s,
         '2: stderr says what users got') or diag(bg_stderr($h));
    my $j = json_ok('2', $out);
    is($j->{exit_code}, 3, '2: json: exit_code 3');
    is($j->{outcome}, 'users_affected', '2: json: outcome users_affected');
    my $e = $j->{endpoints}[0] || {};
    is($e->{rejected}, 3, '2: json: rejected 3');
    is($e->{timed_out}, 6, '2: json: timed_out 6');
    is($e->{counters} && $e->{counters}{timed_out}, 6, '2: json: counters (deltas) timed_out 6');
    ok($e->{resumed}, '2: json: resumed');
    $_->close for @rej, @pass;
    not_paused('2');

    # the same as a table
    my $h2 = intermissionctl_bg('run', '--endpoint', $E, '--', gated_command('r2b'));
    ok(gate_started('r2b', 10), '2 table: COMMAND started');
    my $c = send_only($port, '/reject/r2b/1');
    my ($st) = $c->read_response(10);
    is($st, 503, '2 table: one rejected');
    gate_open('r2b');
    my ($rc2, $out2) = bg_wait($h2, 20);
    is($rc2, 3, '2 table: exit 3');
    like($out2, qr/^\Q$E\E\s+resumed\s+\S+s\s+\d+\s+0\s+1\s+1\s+-$/m,
         '2 table: summary row: rejected 1, timed out 1') or diag($out2);
    $c->close;
    not_paused('2 table');
}

# ---- 3. deltas: a later clean run reports zero
{
    my ($rc, $out, $err) = intermissionctl('run', '--endpoint', $E, '--', 'true');
    is($rc, 0, '3: a clean run after them: exit 0') or diag($err);
    like($out, qr/^\Q$E\E\s+resumed\s+\S+s\s+\d+\s+0\s+0\s+0\s+-$/m, '3: rejected 0, timed out 0')
        or diag($out);
}

# ---- --help
{
    my ($rc, $out) = intermissionctl('--help');
    like($out, qr/\b3 run: the maintenance completed, but users saw it/, '--help documents exit 3');
    ($rc, $out) = intermissionctl('run', '--help');
    like($out, qr/REJECTED.*TIMED OUT/s, 'run --help documents the summary columns');
}

finish();
