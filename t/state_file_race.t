#!/usr/bin/perl
# state_file_race.t: with intermission_state_file and several workers, a resume must never
# be undone by another worker. Each worker follows the state file (every 100 ms) to apply
# the changes of another nginx generation (binary upgrade). There is one generation here:
# a worker must not take a pause that another worker of its own generation wrote, and
# resumed since, for a change of "another generation" and pause the scope again.
# worker_processes 4. Up to 60 rounds: on one keep-alive connection to the control port,
# `POST enable` and `POST disable` are pipelined (one write), both answer 200; 30 ms later
# status must show the scope not paused, every round. Afterwards the error log has no
# "another nginx generation" line, a GET through the scope is answered at once, the state
# file records no pause, and a full restart comes back unpaused.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $CONF = <<'CONF';
worker_processes 4;
http {
    intermission_state_file %%PREFIX%%/intermission.state;
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
start_nginx($CONF);

my $port = port('PORT');
is(scalar(worker_pids()), 4, 'four workers');

my $ROUNDS = 60;
my ($answered, $unpaused, $first_bad, $last) = (0, 0, undef, undef);
my $ctl = http_connect(port('CTL_PORT'));
for my $round (1 .. $ROUNDS) {
    if ($ctl->eof) { $ctl->close; $ctl = http_connect(port('CTL_PORT')) }
    $ctl->pipeline({ method => 'POST', path => '/ctl/enable' },
                   { method => 'POST', path => '/ctl/disable' });
    my ($st1) = $ctl->read_response(5);
    my ($st2) = $ctl->read_response(5);
    $answered++ if ($st1 // 0) == 200 && ($st2 // 0) == 200;
    sleep 0.03;
    $last = scope_status('default');
    if ($last && !$last->{paused}) {
        $unpaused++;
    } else {
        $first_bad = $round;
        diag("round $round: the scope is paused again after the resume "
             . "(enable: " . ($st1 // 'none') . ", disable: " . ($st2 // 'none') . ")");
        last;
    }
}
$ctl->close;
my $rounds = $first_bad // $ROUNDS;
is($answered, $rounds, "every pipelined enable and disable answered 200 ($rounds rounds)");
is($unpaused, $ROUNDS, "the scope is not paused after the resume, in all $ROUNDS rounds")
    or diag('first failed in round ' . ($first_bad // 'none'));

my @gen = error_log_lines(qr/another nginx generation/);
is(scalar @gen, 0, 'no "another nginx generation" line in the error log (there is one generation)')
    or diag(join "\n", @gen[0 .. ($#gen < 4 ? $#gen : 4)]);

my $t0 = time;
my ($st) = http_get($port, '/after', timeout => 3);
my $dt = time - $t0;
is($st, 200, 'a GET through the scope is answered 200');
ok($dt < 1.5 * slow(), sprintf('... at once, not held (%.3f s)', $dt));

# The spurious pause must not reach the disk either: a full restart would bring it back.
my $file = read_file_text('intermission.state') // '';
unlike($file, qr/^paused default /m, 'the state file does not record a pause')
    or diag("state file:\n$file");
stop_nginx();
start_nginx($CONF);
my $s = scope_status('default');
ok($s && !$s->{paused}, 'after a full restart the scope is not paused');

finish();
