#!/usr/bin/perl
# long_lived_chaos.t: a seeded, randomized test of long-lived connections. nginx runs 3
# workers (reuseport, so that connections spread over them) with five kinds of location:
# WebSockets with and without intermission_close_on_pause, SSE streams (intermission_drain
# off) with and without it, and endless responses of an unmarked location, which a drain
# waits for. Random steps, drawn with rand() after srand(seed): open a connection of a kind
# (while nothing is paused), close one, pause, resume, reload, SIGKILL a worker. The model
# is the set of client connections still open. Invariants, checked after every step:
#   counts:  status shows upgraded = the open WebSockets, streams = the open SSE streams,
#            inflight = the open unmarked responses (nginx's and the model's figures agree
#            within 3 s: a closed or killed connection leaves the counts);
#   closed:  a pause closes, within 3 s, every connection of a close_on_pause location
#            opened before it, and no other (but for those of a worker the test killed);
#   drain:   `drain?timeout=500ms` answers 200 when no unmarked response is open, else 503
#            with one blocker per open one that is over 1.5 s old (up to 10), each /slow.
# CHAOS_SEED=N replays a run; LL_CHAOS_STEPS (default 40) sets its length.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $seed = $ENV{CHAOS_SEED} // (time() ^ $$) % 1_000_000;
my $steps = $ENV{LL_CHAOS_STEPS} // 40;
srand($seed);
diag("seed $seed ($steps steps): replay with CHAOS_SEED=$seed");

my $WS = <<'WS';
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
WS

my $CONF = <<"CONF";
worker_processes 3;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        intermission on;
        proxy_buffering off;
        location /ws { $WS }
        location /wsclose { intermission_close_on_pause on; $WS }
        location /events { intermission_drain off; proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
        location /events-close {
            intermission_drain off;
            intermission_close_on_pause on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /slow { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
    }
    %%CONTROL_SERVER%%
}
CONF

# kind => [path, what status counts it as, closed by a pause]
my %KIND = (
    ws      => ['/ws', 'upgraded', 0],
    wsclose => ['/wsclose', 'upgraded', 1],
    sse     => ['/events?stream=0', 'streams', 0],
    sseclose => ['/events-close?stream=0', 'streams', 1],
    slow    => ['/slow?stream=0', 'inflight', 0],
);
my @KINDS = sort keys %KIND;

start_nginx($CONF);
my $port = port('PORT');
my (@open, @violations, $paused, $killed);
my %done;

sub violation { push @violations, "step $_[0]: $_[1]"; diag("violation at step $_[0]: $_[1]") }

sub scope { scope_status('default') // {} }

sub open_conn {
    my ($kind) = @_;
    my ($path) = @{ $KIND{$kind} };
    my ($c, $st);
    if ($kind =~ /^ws/) {
        ($c, $st) = ws_open($port, $path);
    } else {
        $c = http_connect($port);
        $c->send_request(path => $path);
        ($st) = $c->read_head;
    }
    return undef unless ($st // 0) == ($kind =~ /^ws/ ? 101 : 200);
    return { c => $c, kind => $kind, since => time };
}

# drops the connections nginx closed (a pause, a killed worker); returns them
sub reap_closed {
    my @gone = grep { $_->{c}->closed(0) } @open;
    my %g = map { $_ => 1 } @gone;
    @open = grep { !$g{$_} } @open;
    return @gone;
}

sub expect_counts {
    my ($step) = @_;
    my %want = (upgraded => 0, streams => 0, inflight => 0);
    my $ok = wait_for(sub {
        reap_closed() if $killed;
        %want = (upgraded => 0, streams => 0, inflight => 0);
        $want{ $KIND{ $_->{kind} }[1] }++ for @open;
        my $s = scope();
        !grep { ($s->{$_} // -1) != $want{$_} } keys %want;
    }, 3);
    my $s = scope();
    violation($step, sprintf('counts: status %s, model %s', join(',', map { "$_=" . ($s->{$_} // '?') } sort keys %want),
                             join(',', map { "$_=$want{$_}" } sort keys %want))) unless $ok;
}

for my $step (1 .. $steps) {
    my $r = rand;
    my $what = $r < 0.45 ? 'open' : $r < 0.6 ? 'close' : $r < 0.75 ? 'pause' : $r < 0.82 ? 'reload'
             : $r < 0.86 ? 'kill' : 'drain';
    $what = 'resume' if $paused && ($what eq 'open' || rand() < 0.3);
    $killed = 0;
    if ($what eq 'open') {
        my $kind = $KINDS[int rand @KINDS];
        my $c = open_conn($kind);
        if ($c) { push @open, $c } else { violation($step, "open $kind: no answer") }
    } elsif ($what eq 'close' && @open) {
        my $i = int rand @open;
        splice(@open, $i, 1)->{c}->close;
    } elsif ($what eq 'pause' && !$paused) {
        my @before = @open;
        my ($st) = ctl('POST', 'enable');
        violation($step, "pause: $st") unless ($st // 0) == 200;
        $paused = 1;
        my @closing = grep { $KIND{ $_->{kind} }[2] } @before;
        my $all = wait_for(sub { !grep { !$_->{c}->closed(0) } @closing }, 3);
        violation($step, 'closed: ' . scalar(grep { !$_->{c}->closed(0) } @closing)
                         . ' close_on_pause connection(s) still open') unless $all;
        sleep 0.3;
        my @wrong = grep { !$KIND{ $_->{kind} }[2] && $_->{c}->closed(0) } @before;
        violation($step, 'closed: the pause closed ' . join(',', map { $_->{kind} } @wrong)) if @wrong;
        reap_closed();
    } elsif ($what eq 'resume' || ($what eq 'pause' && $paused)) {
        my ($st) = ctl('POST', 'disable');
        violation($step, "resume: $st") unless ($st // 0) == 200;
        $paused = 0;
    } elsif ($what eq 'reload') {
        reload_nginx($CONF);
    } elsif ($what eq 'kill') {
        my @w = worker_pids();
        kill 'KILL', $w[int rand @w];
        allow_alerts(qr/exited on signal 9/);
        $killed = 1;
        sleep 0.3;
    } elsif ($what eq 'drain') {
        my ($st, undef, $j) = ctl('GET', 'drain', { timeout => '500ms' });
        my @slow = grep { $_->{kind} eq 'slow' } @open;
        my ($e) = grep { $_->{name} eq 'default' } @{ ($j && $j->{scopes}) || [] };
        if (!@slow) {
            violation($step, "drain: $st with nothing unmarked open") unless ($st // 0) == 200;
        } else {
            violation($step, "drain: $st with " . scalar(@slow) . ' unmarked open') unless ($st // 0) == 503;
            my @b = @{ ($e && $e->{blockers}) || [] };
            my $old = grep { time - $_->{since} > 1.5 } @slow;
            $old = 10 if $old > 10;
            violation($step, "drain: " . scalar(@b) . " blocker(s) for $old open over 1.5 s")
                if @b < $old || @b > @slow;
            violation($step, 'drain: a blocker that is not /slow') if grep { $_->{path} ne '/slow' } @b;
        }
    }
    $done{$what}++;
    expect_counts($step);
}

ctl('POST', 'disable') if $paused;
$_->{c}->close for @open;
@open = ();
expect_counts('end');
diag(join(', ', map { "$_ $done{$_}" } sort keys %done));
is_deeply(\@violations, [], "no violation in $steps steps (seed $seed)");
finish();
