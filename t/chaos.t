#!/usr/bin/perl
# chaos.t: a seeded, randomized chaos test. nginx runs 4 workers (upgradable, for USR2) with
# two scopes, "a" (intermission_bypass $http_x_bypass; max_held 500) and "b" (max_held 20,
# tight on purpose: the load fills b up to 19 while it is paused, so that counts a dead
# worker left behind show as 503s), a third scope "c" that reloads add and remove, a state
# file, and a proxy_cache_path (so that a cache manager process exists). Each scope proxies
# to a recording backend of its own, so the test sees which scope's backend every request
# reached, and every request carries a unique id in its path (/<scope>/r<id>), so that every
# send is matched to its answer and to its arrivals at the backends.
#
# Steady load runs the whole time, driven from the test loop: keep-alive HTTP/1.1
# connections (each first asks /who, so the test knows its worker), one-request
# connections (some with X-Bypass on "a"), and nghttp runs of 4 HTTP/2 streams in the
# background; tens of requests per second. Random steps, drawn with rand() after
# srand(seed):
#   pause (a, b, c or all; sometimes auto_resume=2s..5s; sometimes wait=drained&timeout=2s),
#   resume (one or all), a flap (2 to 4 pauses and resumes 0 to 60 ms apart, as a script
#   or a fleet tool sends them), reload (the same configuration, or one that adds or
#   removes "c"), SIGKILL of a worker (a current one, with a slow request in flight and up
#   to 3 held ones pinned to it first; or one shutting down after a reload, holding
#   requests), SIGKILL of the cache manager, a binary upgrade (USR2, WINCH to the old
#   master at once, QUIT once its workers are gone), a burst of 20 client connections that
#   send a request (to a paused scope if any) and close at once, or load only. When
#   something stayed paused for 8 steps, the next step is a resume of all scopes.
# The model: the scopes that the last accepted pause/resume (and auto_resume deadlines) left
# paused, as intervals: a pause counts from its answer, a resume from when it was sent, an
# auto_resume from the earliest moment it can fire (a deadline about to pass is waited out
# before a command or a status check). A scope that a reload removes keeps its slot and its
# pause (README: removed scopes keep their slot; old workers hold its requests until the
# resume), and a resume of all scopes resumes it; what a pause of all scopes does to it
# while it is removed, or what an upgrade does to it, is not documented: the model then
# does not know (until the next resume of all) and checks nothing about it. Invariants:
#   status:   status shows paused exactly the scopes the model has paused (and an
#             auto-resume deadline where the model has one), checked after every step;
#   paused:   a request sent while its scope was paused does not reach that scope's
#             backend before the resume that ends the pause was sent (bypassed requests and
#             requests held for intermission_max_time excepted);
#   abort:    a request whose client left while it was held never reaches the backend;
#   held0:    after a resume (or auto-resume) leaves nothing paused, and a settle, status
#             shows held=0 in every scope;
#   answered: ... and every request sent before got exactly one answer (200, with its own
#             body); "no answer" is expected only for a connection to a worker that the
#             test killed, for a request that raced with a reload's or upgrade's graceful
#             shutdown of its (old) worker and never reached a backend, and for the bursts;
#             at the end, every upgrade's old master has finished;
#   once:     no request reaches a backend twice, or the backend of another scope, and
#             every request answered 200 reached its backend once;
#   max_held: no 503 while fewer requests than intermission_max_held are held (the load
#             keeps below it);
#   held_count: status never shows more held in a scope than the load has requests to it
#             whose clients still wait (or left less than 2 s ago): a client that leaves is
#             noticed at once, and a dead worker takes its counts with it;
#   drain:    after a SIGKILL (of a worker or of the cache manager), a drain with nothing
#             in flight in the model (the load stops for it) answers 200 within 1.5 s: a
#             drain never waits on a dead process;
#   bypass:   a bypassed request is answered within 5 s while its scope is paused;
#   control:  every pause, resume and status answers 200 (a drained pause 200 or 503), and
#             reloads and upgrades work;
# and finish() checks the error log for alerts and crashes (the master's "exited on signal
# 9" lines are expected). Each invariant is one assertion at the end; each violation is
# printed as it is found ("chaos: VIOLATION step N (the step), seed S: [invariant] what was
# expected and seen"), and a failing run prints its steps and how to replay it.
#
# Environment: CHAOS_SEED (default: from the time; printed first, "chaos: seed N (replay:
# CHAOS_SEED=N prove -I t/lib t/chaos.t)"; the same seed replays the same sequence of
# steps: the load draws from a PRNG of its own; what a step meets can differ with timing,
# e.g. whether an auto-resume already fired), CHAOS_SECONDS (how long the steps run,
# default 40; the whole file takes about 5 s more).
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Select;
use POSIX qw(WNOHANG);
use Intermission::Test;

my $SEED = (defined $ENV{CHAOS_SEED} && $ENV{CHAOS_SEED} =~ /^\d+$/)
    ? $ENV{CHAOS_SEED} + 0
    : (int(time * 1000) ^ ($$ << 10)) % 1_000_000_000;
my $SECONDS = (defined $ENV{CHAOS_SECONDS} && $ENV{CHAOS_SECONDS} =~ /^\d+(?:\.\d+)?$/)
    ? $ENV{CHAOS_SECONDS} + 0 : 40;
diag("chaos: seed $SEED (replay: CHAOS_SEED=$SEED prove -I t/lib t/chaos.t)");
srand($SEED);
{
    my $need = int(($SECONDS + 200) * slow());
    alarm($need) if $need > 300 * slow();
}

# The load's own PRNG (xorshift32), so that rand() draws only the steps.
my $LSTATE = (($SEED * 2654435761) ^ 0x9e3779b9) & 0xffffffff || 1;
sub lrand {
    $LSTATE ^= ($LSTATE << 13) & 0xffffffff;
    $LSTATE ^= $LSTATE >> 17;
    $LSTATE ^= ($LSTATE << 5) & 0xffffffff;
    return $LSTATE / 4294967296;
}

my $NGHTTP = '/usr/bin/nghttp';
my $H2 = -x $NGHTTP;
note('nghttp not installed: no HTTP/2 load') unless $H2;

allow_alerts(qr/exited on signal 9/);

my $EPS = 0.05;                              # clock slack between the test and the backends
my $MAX_TIME = int($SECONDS + 120);          # intermission_max_time: longer than the test
# b's max_held is tight, and the load fills b up to just below it while b is paused: counts
# that a dead worker left behind then show as 503s
my %MAX_HELD = (a => 500, b => 20, c => 500);
my %CAP = (a => 40, b => 19, c => 30);       # the most the load keeps outstanding per scope
my $N_KA = 6;                                # keep-alive load connections
my $N_ONE = 30;                              # one-request connections open at most
my $BURST = 20;
my $SLOW = slow();

sub conf {
    my ($with_c) = @_;
    my $loc = sub {
        my ($s, $extra) = @_;
        my $S = uc $s;
        return "        location /$s/ {\n"
             . "            intermission $s;\n$extra"
             . "            proxy_set_header X-Worker \$pid;\n"
             . "            proxy_read_timeout 60s;\n"
             . "            proxy_pass http://127.0.0.1:%%${S}_BACKEND_PORT%%;\n"
             . "        }\n";
    };
    return "worker_processes 4;\n"
         . "http {\n"
         . "    intermission_state_file %%PREFIX%%/intermission.state;\n"
         . "    intermission_max_time ${MAX_TIME}s;\n"
         . "    intermission_max_held $MAX_HELD{a};\n"
         . "    proxy_cache_path %%PREFIX%%/cache keys_zone=chaos:1m;\n"
         . "    keepalive_requests 1000000;\n"
         . "    server {\n"
         . "        listen 127.0.0.1:%%PORT%%;\n"
         . "        listen 127.0.0.1:%%H2_PORT%% http2;\n"
         . "        add_header X-Worker \$pid always;\n"
         . "        location = /who { return 200 \"\$pid\"; }\n"
         . $loc->('a', "            intermission_bypass \$http_x_bypass;\n")
         . $loc->('b', "            intermission_max_held $MAX_HELD{b};\n")
         . ($with_c ? $loc->('c', '') : '')
         . "    }\n"
         . "    server {\n"
         . "        listen 127.0.0.1:%%CTL_PORT%%;\n"
         . "        location /ctl/ { intermission_control; add_header X-Worker \$pid always; }\n"
         . "    }\n"
         . "}\n";
}

# ---------------------------------------------------------------- bookkeeping

my $T0 = time;
sub rel { defined $_[0] ? sprintf('+%.3f', $_[0] - $T0) : 'never' }

my $STEP = 0;
my $STEP_DESC = 'start';
my @STEPLOG;
my (%VIOL, %CHECKS);
my %INV = (
    status   => 'status shows paused exactly the scopes the last accepted commands left paused',
    paused   => "nothing reaches a paused scope's backend except bypassed and timed-out requests",
    abort    => 'a request whose client left while held never reaches the backend',
    held0    => 'after a resume and a settle, held is 0 in every scope',
    answered => 'after a resume and a settle, every request sent got exactly one answer',
    once     => 'no request reaches a backend twice, or the backend of another scope',
    max_held => 'max_held never rejects while fewer are held',
    held_count => 'held never counts more than the requests whose clients still wait',
    drain    => 'a drain never waits on a dead process',
    bypass   => 'a bypassed request passes while its scope is paused',
    control  => 'control commands, reloads and upgrades work',
);
my @INV_ORDER = qw(status paused abort held0 held_count answered once max_held drain bypass control);

sub violation {
    my ($inv, $msg) = @_;
    my $full = sprintf('step %d (%s), seed %d: [%s] %s', $STEP, $STEP_DESC, $SEED, $inv, $msg);
    push @{ $VIOL{$inv} }, $full;
    diag("chaos: VIOLATION $full") if @{ $VIOL{$inv} } <= 5;
    diag("chaos: more [$inv] violations are counted, not printed") if @{ $VIOL{$inv} } == 6;
}

# the model: per scope, paused (1/0), det (0: what status shows is not known: a pause of all
# scopes ran, or an upgrade, while a reload had removed the scope, or a command failed;
# until the next resume of all), the current episode and deadline
my %M = map { $_ => { paused => 0, det => 1, ep => undef, eps => [] } } qw(a b c);
my $C_CONF = 1;             # scope c is in the configuration
my $C_READY = 0;            # the load sends to c from then on: after a reload adds c, the
                            # old workers, which have no /c/, may still accept for a moment
my $NEED_CP = 0;            # something was released (or killed, reloaded) since the last checkpoint
my $SINCE_CLEAR = 0;        # steps since the model last had nothing paused (a checkpoint)

sub configured { ('a', 'b', ($C_CONF ? 'c' : ())) }

# requests: id => { id, scope, kind (ka, one, slow, pin, h2, burst), path, sent, step,
#   bypass, conn, worker, run, arr => [[time, backend]], status, t_ans, done, exempt, indet }
my (%REQ, %OUT, %OUTN);
my $NEXT_ID = 0;
my @BURSTS;                 # [time, scope, n]: recently aborted, may still count as held
my %STATS;

sub new_req {
    my (%o) = @_;
    my $id = ++$NEXT_ID;
    my $R = { id => $id, step => $STEP, arr => [], %o };
    $R->{path} = "/$o{scope}/r$id" . ($o{query} // '');
    $REQ{$id} = $R;
    return $R;
}

sub mark_sent {
    my ($R) = @_;
    $R->{sent} = time;
    $R->{indet} = $M{ $R->{scope} }{det} ? 0 : 1;
    $OUT{ $R->{id} } = $R;
    $OUTN{ $R->{scope} }++;
    $STATS{sent}++;
    $STATS{"sent_$R->{kind}"}++;
}

sub done {
    my ($R, $how) = @_;
    return if $R->{done};
    $R->{done} = $how;
    if (delete $OUT{ $R->{id} }) { $OUTN{ $R->{scope} }-- }
}

sub outstanding {
    my ($s) = @_;
    my $n = $OUTN{$s} // 0;
    my $now = time;
    @BURSTS = grep { $now - $_->[0] < 2 } @BURSTS;
    $n += $_->[2] for grep { $_->[1] eq $s } @BURSTS;
    return $n;
}

sub rdesc {
    my ($R) = @_;
    return sprintf('request #%d %s (%s%s, sent at %s in step %d%s)', $R->{id}, $R->{path}, $R->{kind},
                   $R->{bypass} ? ', X-Bypass' : '', rel($R->{sent}), $R->{step},
                   defined $R->{worker} ? ", worker $R->{worker}" : '');
}

# The pause episode that covers a request sent at $ts to $s: the scope was paused (the
# pause answered) when it was sent, and neither the resume nor the earliest auto-resume had
# started yet.
sub covering {
    my ($s, $ts) = @_;
    for my $e (reverse @{ $M{$s}{eps} }) {
        next if $ts < $e->{start};
        my $end = $e->{end} // $e->{dl_lo};
        return (defined $end && $ts >= $end) ? undef : $e;
    }
    return undef;
}

sub ep_desc {
    my ($e) = @_;
    return sprintf('paused by step %d (answered at %s), %s', $e->{step}, rel($e->{start}),
                   defined $e->{end} ? "ended by $e->{how} at " . rel($e->{end})
                 : defined $e->{dl_lo} ? 'auto-resume not before ' . rel($e->{dl_lo})
                 : 'still paused');
}

# ---------------------------------------------------------------- the model

# a pause without a deadline ($dl_lo undef) keeps the one of a scope paused already
sub ep_open {
    my ($s, $start, $dl_lo, $dl_hi) = @_;
    my $m = $M{$s};
    my $new = !$m->{paused} || !$m->{det};
    if ($new) {
        if ($m->{ep}) { $m->{ep}{end} = $start; $m->{ep}{how} = 'a new pause'; }
        my $e = { start => $start, step => $STEP, end => undef };
        push @{ $m->{eps} }, $e;
        $m->{ep} = $e;
    }
    $m->{paused} = 1;
    $m->{det} = 1;
    if ($new || defined $dl_lo) {
        $m->{ep}{dl_lo} = $dl_lo;
        $m->{ep}{dl_hi} = $dl_hi;
    }
}

sub ep_close {
    my ($s, $t, $how) = @_;
    my $m = $M{$s};
    # a pause the model lost track of ends at the latest here too (a resume reaches a scope
    # whatever the model knew of it)
    if (my $l = delete $m->{lost}) {
        if (!defined $l->{end} || $l->{end} > $t) { $l->{end} = $t; $l->{how} = $how }
    }
    if ($m->{ep}) {
        $m->{ep}{end} = $t;
        $m->{ep}{how} = $how;
        $m->{ep} = undef;
    }
    $m->{paused} = 0;
    $NEED_CP = 1;
}

# the model no longer knows what a scope's state is; a pause it had may end (at the
# earliest) at $t
sub ep_indet {
    my ($s, $t) = @_;
    my $m = $M{$s};
    if ($m->{ep}) {
        $m->{ep}{end} = $t;
        $m->{ep}{how} = 'the earliest moment it may have ended (then the model lost track)';
        $m->{lost} = $m->{ep};
        $m->{ep} = undef;
    }
    $m->{paused} = 0;
    $m->{det} = 0;
}

# auto-resume deadlines that surely passed
sub advance_model {
    my $now = time;
    for my $s (qw(a b c)) {
        my $e = $M{$s}{ep} or next;
        next unless $M{$s}{paused} && defined $e->{dl_hi} && $now > $e->{dl_hi};
        ep_close($s, $e->{dl_lo}, 'its auto-resume, due');
    }
}

# a deadline within $margin s (or passing now): what status shows is not known yet
sub ambiguous {
    my ($margin) = @_;
    my $now = time;
    for my $s (qw(a b c)) {
        my $e = $M{$s}{ep} or next;
        next unless $M{$s}{paused} && defined $e->{dl_lo};
        return 1 if $now >= $e->{dl_lo} - $margin && $now <= $e->{dl_hi};
    }
    return 0;
}

sub settle_deadlines {
    my $deadline = time + 10;
    pump(0.05) while ambiguous(0.6) && time < $deadline;
    advance_model();
}

sub paused_now { grep { $M{$_}{paused} && $M{$_}{det} } qw(a b c) }

# ---------------------------------------------------------------- connections

my $PORT = port('PORT');
my $H2PORT = port('H2_PORT');
my (%CONN, %DEAD, %RETIRED, @WINDOWS);
my $CID = 0;
my $PAUSE_LOAD = 0;
my ($NEXT_ONE, $NEXT_H2) = (0, 0);

sub conn_new {
    my ($kind) = @_;
    my $c = eval { http_connect($PORT, timeout => 2) } or return undef;
    my $k = { id => ++$CID, c => $c, kind => $kind, state => 'who', created => time };
    if (!eval { $c->send_request(path => '/who', keepalive => 1); 1 }) { $c->close; return undef }
    $CONN{ $k->{id} } = $k;
    return $k;
}

sub conn_close {
    my ($k) = @_;
    $k->{c}->close;
    delete $CONN{ $k->{id} };
}

sub h1_send {
    my ($k, $R) = @_;
    mark_sent($R);
    $R->{conn} = $k->{id};
    $R->{worker} = $k->{worker};
    $R->{exempt} = 'killed' if $k->{killed};
    $k->{req} = $R;
    $k->{state} = 'busy';
    my @h = $R->{bypass} ? ('X-Bypass' => '1') : ();
    eval { $k->{c}->send_request(path => $R->{path}, headers => \@h, keepalive => $k->{kind} eq 'one' ? 0 : 1); 1 }
        or do { on_closed($R, $k); conn_close($k) };
}

# a request closed without an answer in a window of a reload or an upgrade: its worker was
# an old one, shut down gracefully, which closes idle keep-alive connections
sub window_exempt {
    my ($R) = @_;
    for my $w (@WINDOWS) {
        next if $R->{sent} < $w->{t0} - 0.1;
        next if defined $w->{t1} && $R->{sent} > $w->{t1} + 2;
        if ($R->{kind} eq 'h2') { return $w->{what} }
        return $w->{what} if defined $R->{worker} && $w->{workers}{ $R->{worker} };
    }
    return undef;
}

sub on_closed {
    my ($R, $k) = @_;
    return if $R->{done};
    done($R, 'closed');
    $R->{t_closed} = time;
    my $ex = $R->{exempt} // window_exempt($R);
    if ($ex) {
        $R->{exempt} = $ex;
        $STATS{"no_answer_$ex"}++;
        return;
    }
    return if $R->{indet};
    violation('answered', rdesc($R) . ': its connection was closed without an answer (no kill, '
              . 'reload or upgrade explains it)');
}

sub on_answer {
    my ($R, $st, $h, $body) = @_;
    if ($R->{done}) {
        violation('answered', rdesc($R) . ": a second answer ($st) after '$R->{done}'");
        return;
    }
    done($R, 'answered');
    $R->{status} = $st;
    $R->{t_ans} = time;
    $STATS{answered}++;
    $CHECKS{answered}++;
    $CHECKS{max_held}++ if !$R->{indet} && !$R->{bypass} && covering($R->{scope}, $R->{sent});
    if ($st == 200) {
        if (defined $body && $body ne "ok $R->{path}") {
            violation('answered', rdesc($R) . ": answered 200 with the body '" . substr($body, 0, 80)
                      . "', not 'ok $R->{path}'");
        }
    } elsif ($st == 503) {
        my $n = outstanding($R->{scope}) + 1;
        if ($n < $MAX_HELD{ $R->{scope} }) {
            my $ss = eval { scope_status($R->{scope}) };
            violation('max_held', rdesc($R) . ": answered 503 while at most $n requests of scope "
                      . "$R->{scope} were held or on their way (max_held $MAX_HELD{ $R->{scope} }); "
                      . 'status then: held=' . ($ss ? $ss->{held} // '?' : '?') . ' rejected='
                      . ($ss ? $ss->{counters}{rejected} // '?' : '?'));
        }
    } else {
        violation('answered', rdesc($R) . ": answered $st, expected 200");
    }
    if ($R->{bypass} && !$R->{indet} && covering($R->{scope}, $R->{sent})) {
        $CHECKS{bypass}++;
        violation('bypass', rdesc($R) . sprintf(': sent while scope a was paused, answered only after %.2f s',
                                                 $R->{t_ans} - $R->{sent}))
            if $R->{t_ans} - $R->{sent} > 5 * $SLOW;
    }
}

sub conn_poll {
    my ($k) = @_;
    while (1) {
        my @r = eval { $k->{c}->read_response(0) };
        if ($@) {
            my $e = $@;
            $e =~ s/\s+$//;
            if ($k->{state} eq 'busy') {
                violation('answered', rdesc($k->{req}) . ": an answer that does not parse: $e");
                done($k->{req}, 'closed');
            }
            conn_close($k);
            return;
        }
        last unless @r;
        my ($st, $h, $body) = @r;
        my $close = ($h->{connection} // '') =~ /close/i;
        if ($k->{state} eq 'who') {
            if ($st != 200 || ($body // '') !~ /^\d+$/) { conn_close($k); return }
            $k->{worker} = $body + 0;
            if ($DEAD{ $k->{worker} } || $RETIRED{ $k->{worker} } || $close) { conn_close($k); return }
            $k->{state} = 'idle';
            $k->{next_at} = time;
        } elsif ($k->{state} eq 'busy') {
            my $R = delete $k->{req};
            $k->{state} = 'idle';
            on_answer($R, $st, $h, $body);
            $k->{next_at} = time + 0.03 + lrand() * 0.07;
            if ($k->{kind} ne 'ka' || $close || $RETIRED{ $k->{worker} } || $DEAD{ $k->{worker} }) {
                conn_close($k);
                return;
            }
        } else {
            violation('answered', "an answer nobody asked for on connection $k->{id} (worker "
                      . ($k->{worker} // '?') . "): $st '" . substr($body // '', 0, 60) . "'");
        }
    }
    if ($k->{c}->eof) {
        on_closed($k->{req}, $k) if $k->{state} eq 'busy';
        conn_close($k);
    }
}

sub choose_scope {
    my ($n) = @_;
    my @c = grep { outstanding($_) + $n <= $CAP{$_} && ($_ ne 'c' || time >= $C_READY) } configured();
    return undef unless @c;
    return $c[int(lrand() * @c)];
}

# ---------------------------------------------------------------- HTTP/2 runs (nghttp)

my (%RUNS);
my $RUNID = 0;

sub h2_start {
    my $s = choose_scope(4) or return;
    my $run = ++$RUNID;
    my @R = map { new_req(scope => $s, kind => 'h2', run => $run) } 1 .. 4;
    mark_sent($_) for @R;
    my $h = bg_start($NGHTTP, '-n', '-s', map { "http://127.0.0.1:$H2PORT$_->{path}" } @R);
    $RUNS{$run} = { id => $run, h => $h, reqs => \@R, started => time };
}

# `nghttp -s` statistics: { path => status }
sub h2_codes {
    my ($out) = @_;
    my %c;
    $c{$2} = $1 while $out =~ /^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d{3})\s+\S+\s+(\S+)\s*$/mg;
    return \%c;
}

sub h2_poll {
    for my $run (values %RUNS) {
        my ($rc, $out) = bg_wait($run->{h}, 0);
        next unless defined $rc;
        delete $RUNS{ $run->{id} };
        my $codes = h2_codes($out // '');
        for my $R (@{ $run->{reqs} }) {
            if (defined $codes->{ $R->{path} }) {
                on_answer($R, $codes->{ $R->{path} }, undef, undef);
            } else {
                $R->{exempt} //= $run->{exempt};
                on_closed($R, undef);
            }
        }
        $STATS{h2_runs}++;
    }
}

# ---------------------------------------------------------------- backends

my %BLOG = map { $_ => { off => 0, buf => '' } } qw(a b c);

sub on_arrival {
    my ($bs, $t, $uri) = @_;
    my ($ps, $id) = ($uri // '') =~ m{^/([abc])/r(\d+)};
    my $R = defined $id ? $REQ{$id} : undef;
    $CHECKS{once}++;
    if (!$R) {
        violation('once', "the $bs backend received $uri, which the test never sent");
        return;
    }
    push @{ $R->{arr} }, [$t, $bs];
    if ($bs ne $R->{scope}) {
        violation('once', rdesc($R) . " reached the backend of scope $bs at " . rel($t));
    }
    if (@{ $R->{arr} } == 2) {
        violation('once', rdesc($R) . ' reached its backend twice, at ' . join(' and ', map { rel($_->[0]) } @{ $R->{arr} }));
    }
    return if $R->{indet};
    my $e = covering($R->{scope}, $R->{sent}) or return;
    $CHECKS{paused}++;
    if ($R->{kind} eq 'burst') {
        # its client left at once: noticed at once, never forwarded (a resume within 1 s of
        # the burst may release it before the close is seen)
        my $end = $e->{end} // $e->{dl_lo};
        if (!defined $end || $end - $R->{sent} > 1) {
            violation('abort', rdesc($R) . ': its client closed the connection at once while '
                      . "scope $R->{scope} was paused, and yet it reached the backend at " . rel($t)
                      . ' (' . ep_desc($e) . ')');
            return;
        }
    }
    return if $R->{bypass};
    my $end = $e->{end} // $e->{dl_lo};
    return if defined $end && $t >= $end - $EPS;
    return if $t - $R->{sent} >= $MAX_TIME - 1;
    violation('paused', rdesc($R) . ": sent while scope $R->{scope} was paused, reached its backend at "
              . rel($t) . ' (' . ep_desc($e) . ')');
}

sub backend_scan {
    for my $s (qw(a b c)) {
        my $path = prefix() . '/backend-' . uc($s) . '_BACKEND.log';
        open my $fh, '<', $path or next;
        binmode $fh;
        seek($fh, $BLOG{$s}{off}, 0);
        local $/;
        my $d = <$fh> // '';
        close $fh;
        next unless length $d;
        $BLOG{$s}{off} += length $d;
        my $buf = $BLOG{$s}{buf} . $d;
        my $last = rindex($buf, "\n");
        if ($last < 0) { $BLOG{$s}{buf} = $buf; next }
        $BLOG{$s}{buf} = substr($buf, $last + 1);
        for my $l (split /\n/, substr($buf, 0, $last)) {
            my @f = split /\t/, $l, 7;
            on_arrival($s, $f[0], $f[4]);
        }
    }
}

# ---------------------------------------------------------------- upgrades in progress

my @PENDING;    # { old_master, old_workers, quit_sent }

sub retire_poll {
    for my $u (@PENDING) {
        if (!$u->{quit_sent}) {
            next if grep { pid_alive($_) } @{ $u->{old_workers} };
            kill 'QUIT', $u->{old_master};
            $u->{quit_sent} = time;
        } elsif (!pid_alive($u->{old_master})) {
            waitpid($u->{old_master}, WNOHANG);
            $u->{gone} = 1;
        }
    }
    @PENDING = grep { !$_->{gone} } @PENDING;
}

# ---------------------------------------------------------------- the loop

my ($T_SCAN, $T_H2, $T_RETIRE) = (0, 0, 0);

sub load_tick {
    return if $PAUSE_LOAD;
    my $now = time;
    my $nka = grep { $_->{kind} eq 'ka' } values %CONN;
    conn_new('ka') for 1 .. ($N_KA - $nka > 2 ? 2 : $N_KA - $nka);
    for my $k (values %CONN) {
        next unless $k->{state} eq 'idle' && $now >= $k->{next_at};
        next unless $k->{kind} eq 'ka' || $k->{kind} eq 'one';
        my $s = choose_scope(1);
        if (!defined $s) {
            if ($k->{kind} eq 'one') { conn_close($k) } else { $k->{next_at} = $now + 0.1 }
            next;
        }
        my $bypass = $s eq 'a' && $k->{kind} eq 'one' && lrand() < 0.15;
        h1_send($k, new_req(scope => $s, kind => $k->{kind}, bypass => $bypass));
    }
    if ($now >= $NEXT_ONE && (grep { $_->{kind} eq 'one' } values %CONN) < $N_ONE) {
        conn_new('one');
        $NEXT_ONE = $now + 0.06 + lrand() * 0.08;
    }
    if ($H2 && $now >= $NEXT_H2 && keys(%RUNS) < 3) {
        h2_start();
        $NEXT_H2 = $now + 1 + lrand() * 1.5;
    }
}

sub pump_once {
    my ($t) = @_;
    load_tick();
    my %by;
    for my $k (values %CONN) { my $s = $k->{c}->sock or next; $by{ fileno $s } = $k }
    if (%by) {
        my $rs = IO::Select->new(map { $_->{c}->sock } values %by);
        my ($r) = IO::Select->select($rs, undef, undef, $t);
        for my $s (@{ $r || [] }) {
            my $k = $by{ fileno $s } or next;
            conn_poll($k) if $CONN{ $k->{id} };
        }
    } else {
        sleep $t;
    }
    my $now = time;
    if ($now - $T_SCAN >= 0.2) { backend_scan(); $T_SCAN = $now }
    if ($now - $T_H2 >= 0.1) { h2_poll(); $T_H2 = $now }
    if ($now - $T_RETIRE >= 0.3) { retire_poll(); $T_RETIRE = $now }
    advance_model();
}

sub pump {
    my ($secs) = @_;
    my $deadline = time + $secs;
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0;
        pump_once($left > 0.02 ? 0.02 : $left);
    }
}

# ---------------------------------------------------------------- control

# -> (status, json, t_sent, t_answered, raw body); status undef if no answer
sub control {
    my ($method, $cmd, $args, $timeout) = @_;
    my $t0 = time;
    my $c = eval { ctl_send($method, $cmd, $args) };
    return (undef, undef, $t0, time, "cannot connect: $@") unless $c;
    my $deadline = $t0 + ($timeout // 10) * $SLOW;
    while (1) {
        my ($st, undef, $j, $raw) = eval { ctl_recv($c, 0) };
        if (defined $st) { $c->close; return ($st, $j, $t0, time, $raw) }
        if ($c->eof || time > $deadline) {
            $c->close;
            return (undef, undef, $t0, time, $c->eof ? 'connection closed' : 'no answer in time');
        }
        pump_once(0.01);
    }
}

sub check_status {
    my ($what) = @_;
    settle_deadlines();
    my ($st, $j, undef, undef, $raw) = control('GET', 'status');
    if (!defined $st || $st != 200 || !$j) {
        violation('control', "status ($what) answered " . ($st // 'nothing') . ': ' . ($raw // ''));
        return undef;
    }
    my %s = map { $_->{name} => $_ } @{ $j->{scopes} || [] };
    for my $name (configured()) {
        my $m = $M{$name};
        next unless $m->{det};
        $CHECKS{status}++;
        my $got = $s{$name};
        if (!$got) {
            violation('status', "status ($what) does not list scope $name");
            next;
        }
        if (($got->{paused} ? 1 : 0) != $m->{paused}) {
            violation('status', "status ($what) shows scope $name "
                      . ($got->{paused} ? 'paused' : 'not paused') . ', the model has it '
                      . ($m->{paused} ? 'paused (' . ep_desc($m->{ep}) . ')' : 'resumed'
                         . (@{ $m->{eps} } ? ' (last ' . ep_desc($m->{eps}[-1]) . ')' : ''))
                      . "; status: paused_since=" . ($got->{paused_since} // 'null') . ' held='
                      . ($got->{held} // '?'));
            next;
        }
        $CHECKS{held_count}++;
        my $ours = outstanding($name);
        if (($got->{held} // 0) > $ours) {
            my @b = grep { $_->{kind} eq 'burst' && $_->{scope} eq $name && $_->{sent} > time - 30 } values %REQ;
            violation('held_count', "status ($what) shows scope $name held=$got->{held}, but only $ours of "
                      . 'the load\'s requests to it can be held (its clients still wait, or left less than 2 s '
                      . 'ago); ' . scalar(@b) . " requests of the bursts of the last 30 s to $name were "
                      . 'closed by their clients at once; counters: '
                      . join(' ', map { "$_=" . ($got->{counters}{$_} // '?') } sort keys %{ $got->{counters} || {} }));
        }
        if ($m->{paused}) {
            my $has = defined $got->{auto_resume_at} ? 1 : 0;
            my $want = defined $m->{ep}{dl_lo} ? 1 : 0;
            violation('status', "status ($what) shows scope $name paused "
                      . ($has ? "with an auto-resume at $got->{auto_resume_at}" : 'without an auto-resume')
                      . ', the model ' . ($want ? 'has one not before ' . rel($m->{ep}{dl_lo}) : 'has none'))
                if $has != $want;
        }
    }
    return \%s;
}

# pause: $scope undef = all
sub do_pause {
    my ($scope, $auto, $wait) = @_;
    settle_deadlines();
    my @args;
    push @args, "scope=$scope" if defined $scope;
    push @args, "auto_resume=${auto}s" if $auto;
    push @args, 'wait=drained', 'timeout=2s' if $wait;
    my ($st, $j, $t0, $t1, $raw) = control('POST', 'pause', join('&', @args), 15);
    $CHECKS{control}++;
    my @targets = defined $scope ? ($scope) : configured();
    my $ok = defined $st && ($st == 200 || ($wait && $st == 503)) && $j && $j->{scopes};
    if ($ok) {
        my %got = map { $_->{name} => $_ } @{ $j->{scopes} };
        for my $s (@targets) {
            next if $got{$s} && $got{$s}{paused};
            violation('control', "pause " . join('&', @args) . " answered $st without scope $s paused: $raw");
        }
    } else {
        violation('control', 'pause ' . join('&', @args) . ' answered ' . ($st // 'nothing')
                  . ' (expected 200' . ($wait ? ' or 503' : '') . '): ' . ($raw // ''));
    }
    for my $s (@targets) {
        if ($ok) {
            ep_open($s, $t1, $auto ? ($t0 + $auto, $t1 + $auto + 1.0 * $SLOW) : (undef, undef));
        } else {
            ep_indet($s, $t0);
        }
    }
    # A pause of every scope while a reload has removed c: whether it covers c is not
    # documented. If c was paused, it stays paused either way (a pause releases nothing),
    # unless a deadline (its own, which the pause keeps unless it sets one, or the pause's)
    # can end it.
    if (!defined $scope && !$C_CONF) {
        my $m = $M{c};
        if (!$ok) {
            ep_indet('c', $t0);
        } elsif ($m->{det} && $m->{paused}) {
            my @dl = grep { defined } $m->{ep}{dl_lo}, ($auto ? $t0 + $auto : undef);
            ep_indet('c', (sort { $a <=> $b } @dl)[0]) if @dl;
        } else {
            ep_indet('c', $t0);
        }
    }
    return sprintf('answered %s after %.3f s', $st // 'nothing', $t1 - $t0);
}

sub do_resume {
    my ($scope) = @_;
    settle_deadlines();
    my $t0 = time;
    # a resume of all covers c too, also while a reload has removed it (what is held for it
    # in old workers must be released)
    my @targets = defined $scope ? ($scope) : qw(a b c);
    for my $s (@targets) {
        ep_close($s, $t0, 'the resume sent') if $M{$s}{paused} || !$M{$s}{det};
        $M{$s}{det} = 1;
    }
    my ($st, $j, undef, $t1, $raw) = control('POST', 'resume', defined $scope ? "scope=$scope" : undef, 15);
    $CHECKS{control}++;
    if (!defined $st || $st != 200 || !$j || !$j->{scopes}) {
        violation('control', 'resume' . (defined $scope ? " scope=$scope" : '') . ' answered '
                  . ($st // 'nothing') . ' (expected 200): ' . ($raw // ''));
        $M{$_}{det} = 0 for @targets;
        return 'failed';
    }
    my $rel = 0;
    $rel += $_->{released} // 0 for @{ $j->{scopes} };
    return sprintf('answered %d after %.3f s, released %d', $st, $t1 - $t0, $rel);
}

# ---------------------------------------------------------------- checks

# the load stops until nothing is in flight in the model
sub quiesce {
    $PAUSE_LOAD = 1;
    my $deadline = time + 6 * $SLOW;
    my $quiet_since;
    while (time < $deadline) {
        pump(0.05);
        my $now = time;
        my $busy = 0;
        for my $R (values %OUT) {
            my $a = $R->{arr}[-1];
            if ($a) { $busy++ if $R->{kind} ne 'h2' || $now - $a->[0] < 0.5 }
            elsif ($now - $R->{sent} < 0.5) { $busy++ }
        }
        $busy++ if grep { $now - $_->{started} < 0.5 } values %RUNS;
        if ($busy) { $quiet_since = undef; next }
        $quiet_since //= $now;
        return 1 if $now - $quiet_since >= 0.3;
    }
    return 0;
}

sub drain_check {
    my ($why) = @_;
    my $q = quiesce();
    if (!$q) {
        note("drain check after $why skipped: the load did not quiesce");
        $PAUSE_LOAD = 0;
        return;
    }
    settle_deadlines();
    my ($st, $j, $t0, $t1, $raw) = control('GET', 'drain', 'timeout=5s', 10);
    $CHECKS{drain}++;
    if (!defined $st || $st != 200 || $t1 - $t0 > 1.5 * $SLOW) {
        violation('drain', sprintf('%s: with nothing in flight (the load stopped), drain answered %s '
                  . 'after %.2f s, expected 200 within %.1f s: %s', $why, $st // 'nothing', $t1 - $t0,
                  1.5 * $SLOW, $raw // ''));
    }
    $PAUSE_LOAD = 0;
}

my $CHECKPOINTS = 0;

# nothing is paused in the model: every request sent so far is answered, held 0
sub checkpoint {
    my ($what) = @_;
    $NEED_CP = 0;
    $CHECKPOINTS++;
    my $tc = time;
    my $deadline = $tc + 5 * $SLOW;
    my $pending = sub {
        grep { $_->{sent} <= $tc && !$_->{indet} && $M{ $_->{scope} }{det} } values %OUT;
    };
    while (time < $deadline) {
        last unless $pending->();
        pump(0.05);
    }
    my @left = sort { $a->{id} <=> $b->{id} } $pending->();
    for my $R (@left) {
        next if $R->{late_reported}++;
        violation('answered', rdesc($R) . sprintf(': no answer %.1f s after %s', time - $tc, $what)
                  . (@{ $R->{arr} } ? ', though it reached the backend at ' . rel($R->{arr}[0][0])
                                    : ', and it never reached the backend'));
    }
    my ($last, $ok);
    my $hd = time + 3 * $SLOW;
    while (1) {
        my ($st, $j) = control('GET', 'status');
        if ($st && $st == 200 && $j) {
            $last = $j;
            my %s = map { $_->{name} => $_ } @{ $j->{scopes} || [] };
            $ok = !grep { $M{$_}{det} && ($s{$_}{held} // 0) != 0 } configured();
            last if $ok;
        }
        last if time > $hd;
        pump(0.1);
    }
    $CHECKS{held0}++;
    if (!$ok) {
        my %s = map { $_->{name} => $_ } @{ ($last || {})->{scopes} || [] };
        violation('held0', "after $what and a settle of 3 s: status shows "
                  . join(', ', map { "$_ held=" . ($s{$_}{held} // '?') . ' paused=' . ($s{$_}{paused} // '?')
                                     . ' inflight=' . ($s{$_}{inflight} // '?') } configured())
                  . ' (of our requests, ' . scalar(grep { $_->{kind} ne 'h2' } values %OUT)
                  . ' HTTP/1.1 ones are outstanding)');
    }
    $SINCE_CLEAR = 0;
}

# ---------------------------------------------------------------- processes

sub mark_retired {
    my ($workers, $what) = @_;
    my $w = { t0 => time, t1 => undef, what => $what, workers => { map { $_ => 1 } @$workers } };
    push @WINDOWS, $w;
    $RETIRED{$_} = 1 for @$workers;
    for my $k (values %CONN) {
        next unless defined $k->{worker} && $RETIRED{ $k->{worker} };
        conn_close($k) if $k->{state} eq 'idle';
    }
    return $w;
}

sub mark_killed {
    my ($pid) = @_;
    $DEAD{$pid} = 1;
    for my $k (values %CONN) {
        next unless defined $k->{worker} && $k->{worker} == $pid;
        $k->{killed} = 1;
        $k->{req}{exempt} = 'killed' if $k->{req};
    }
    $_->{exempt} = 'killed' for values %RUNS;
}

# a slow request in flight (and up to 3 held ones, if a scope is paused) on the victim
sub pin_to {
    my ($victim) = @_;
    my @paused = grep { configured_has($_) } paused_now();
    my $want = @paused ? 4 : 1;
    my @pinned;
    for (1 .. 80) {
        last if @pinned >= $want;
        my $k = fresh_conn('pin', $victim) or next;
        push @pinned, $k;
    }
    my $n = 0;
    my $slow;
    if (my $k = shift @pinned) {
        my @free = grep { !$M{$_}{paused} && $M{$_}{det} && outstanding($_) < $CAP{$_} } configured();
        my $s = @free ? $free[0] : 'a';
        $k->{kind} = 'slow';
        $slow = new_req(scope => $s, kind => 'slow', bypass => !@free, query => '?sleep=4000');
        h1_send($k, $slow);
        $n++;
    }
    for my $k (@pinned) {
        my ($s) = grep { outstanding($_) < $CAP{$_} } @paused;
        if (!defined $s) { conn_close($k); next }
        h1_send($k, new_req(scope => $s, kind => 'pin'));
        $n++;
    }
    if ($slow) {
        my $deadline = time + 2 * $SLOW;
        pump(0.05) while !@{ $slow->{arr} } && time < $deadline;
    }
    return $n;
}

sub configured_has { my ($s) = @_; scalar grep { $_ eq $s } configured() }

# ---------------------------------------------------------------- steps

sub step_pause {
    my (@r) = @_;
    my $scope = $r[1] < 0.3 ? 'a' : $r[1] < 0.6 ? 'b' : $r[1] < 0.9 ? undef : ($C_CONF ? 'c' : undef);
    my $auto = $r[2] < 0.4 ? 2 + int($r[3] * 4) : 0;
    my $wait = $r[4] < 0.25;
    $STEP_DESC = 'pause ' . ($scope // 'all') . ($auto ? " auto_resume=${auto}s" : '')
               . ($wait ? ' wait=drained&timeout=2s' : '');
    return do_pause($scope, $auto, $wait);
}

sub step_resume {
    my (@r) = @_;
    my $scope = $r[1] < 0.3 ? 'a' : $r[1] < 0.6 ? 'b' : $r[1] < 0.9 ? undef : ($C_CONF ? 'c' : undef);
    $STEP_DESC = 'resume ' . ($scope // 'all');
    return do_resume($scope);
}

my $ABORT;

sub step_reload {
    my ($toggle) = @_;
    my $with = $toggle ? !$C_CONF : $C_CONF;
    $STEP_DESC = 'reload' . ($toggle ? ($with ? ' (adds scope c)' : ' (removes scope c)') : ' (same configuration)');
    my @old = worker_pids(all => 1);
    my $w = mark_retired(\@old, 'reload');
    # a removed scope keeps its slot, and its pause: the old workers hold its requests until
    # the resume (of all scopes)
    if ($C_CONF && !$with) {
        $C_CONF = 0;
        # ... but whether its auto-resume deadline still fires with no worker that has it in
        # its configuration is not documented
        ep_indet('c', $M{c}{ep}{dl_lo}) if $M{c}{det} && $M{c}{paused} && defined $M{c}{ep}{dl_lo};
    }
    my ($o, $n) = eval { reload_nginx(conf($with)) };
    $w->{t1} = time;
    if (!$n) {
        violation('control', "the reload failed: $@");
        $ABORT = 1;
        return 'failed';
    }
    $C_READY = $w->{t1} + 1.5 if $with && !$C_CONF;
    $C_CONF = $with ? 1 : 0;
    $NEED_CP = 1;
    return sprintf('%d new workers after %.2f s', scalar @$n, $w->{t1} - $w->{t0});
}

sub step_kill_worker {
    my (@r) = @_;
    my @cur = worker_pids();
    my %cur = map { $_ => 1 } @cur;
    my @old = grep { !$cur{$_} } worker_pids(all => 1);
    my $old = $r[2] < 0.5 && @old;
    if ($old) {
        # a worker shutting down that holds some of the load's requests, if there is one
        my %holds;
        $holds{ $_->{worker} }++ for grep { defined $_->{worker} } values %OUT;
        my @h = grep { $holds{$_} } @old;
        @old = @h if @h;
    }
    my @from = $old ? @old : @cur;
    if (!@from) { $STEP_DESC = 'kill -9 worker (none running)'; return 'skipped' }
    my $victim = $from[int($r[1] * @from)];
    $STEP_DESC = "kill -9 worker $victim (" . ($old ? 'shutting down' : 'current') . ')';
    my $pinned = pin_to($victim);
    mark_killed($victim);
    kill 'KILL', $victim;
    if (!$old) {
        my $deadline = time + 10 * $SLOW;
        while (time < $deadline) {
            my @w = worker_pids();
            last if @w >= 4 && !grep { $_ == $victim } @w;
            pump(0.05);
        }
    }
    $NEED_CP = 1;
    drain_check("kill -9 of worker $victim");
    return "$pinned requests pinned to it";
}

sub step_kill_cm {
    my @cm = nginx_children(qr/cache manager/);
    if (!@cm) { $STEP_DESC = 'kill -9 cache manager (none running)'; return 'skipped' }
    my $pid = $cm[0];
    $STEP_DESC = "kill -9 cache manager $pid";
    kill 'KILL', $pid;
    my $deadline = time + 5 * $SLOW;
    pump(0.05) while time < $deadline
        && !grep { $_ != $pid } nginx_children(qr/cache manager/);
    drain_check("kill -9 of the cache manager $pid");
    return 'respawned: ' . (grep({ $_ != $pid } nginx_children(qr/cache manager/)) ? 'yes' : 'no');
}

sub step_upgrade {
    if (@PENDING) {
        $STEP_DESC = 'binary upgrade (skipped: the old master of the last one still runs)';
        return 'skipped';
    }
    $STEP_DESC = 'binary upgrade (USR2, WINCH, QUIT)';
    my @old = worker_pids(all => 1);
    my $w = mark_retired(\@old, 'upgrade');
    # a scope that a reload removed has no place in the new generation's state: what a
    # later reload that adds it back shows is not documented
    ep_indet('c', $w->{t0}) if !$C_CONF;
    my $u = eval { upgrade_nginx(conf($C_CONF)) };
    if (!$u) {
        $w->{t1} = time;
        violation('control', "the binary upgrade failed: $@");
        $ABORT = 1;
        return 'failed';
    }
    $RETIRED{$_} = 1 for @{ $u->{old_workers} };
    $w->{workers}{$_} = 1 for @{ $u->{old_workers} };
    kill 'WINCH', $u->{old_master};
    $w->{t1} = time;
    push @PENDING, { old_master => $u->{old_master}, old_workers => $u->{old_workers} };
    $NEED_CP = 1;
    return sprintf('new master %d after %.2f s', $u->{new_master}, $w->{t1} - $w->{t0});
}

sub step_burst {
    my (@r) = @_;
    my @p = grep { configured_has($_) } paused_now();
    my @c = @p ? @p : configured();
    my $s = $c[int($r[1] * @c)];
    # b's max_held is tight: a burst there is as big as b's room under the load's cap
    my $n = $BURST;
    if ($s ne 'a') {
        my $room = $CAP{$s} - outstanding($s);
        if ($room < 5) { $s = 'a' } elsif ($room < $n) { $n = $room }
    }
    $STEP_DESC = "burst of $n aborted clients to scope $s" . ($M{$s}{paused} ? ' (paused)' : '');
    my $sent = 0;
    for (1 .. $n) {
        my $c = eval { http_connect($PORT, timeout => 2) } or next;
        my $R = new_req(scope => $s, kind => 'burst');
        mark_sent($R);
        eval { $c->send_request(path => $R->{path}, keepalive => 0) };
        $c->close;
        done($R, 'aborted');
        $sent++;
    }
    push @BURSTS, [time, $s, $sent];
    return "$sent sent and closed";
}

# a connection whose worker is known (asked /who), ready for a request; undef if none
sub fresh_conn {
    my ($kind, $want) = @_;
    my $c = eval { http_connect($PORT, timeout => 2) } or return undef;
    my ($st, $h, $body) = eval { $c->request(path => '/who', keepalive => 1, timeout => 2) };
    my $w = ($st && $st == 200 && ($body // '') =~ /^(\d+)$/) ? $1 : undef;
    if (!defined $w || $DEAD{$w} || $RETIRED{$w} || (defined $want && $w != $want)
        || ($h->{connection} // '') =~ /close/i) {
        $c->close;
        return undef;
    }
    my $k = { id => ++$CID, c => $c, kind => $kind, state => 'idle', worker => $w + 0, next_at => 0 };
    $CONN{ $k->{id} } = $k;
    return $k;
}

# pause and resume in quick succession (what a script or a fleet tool does): 2 to 4
# commands, 0 to 60 ms apart, with a few more requests held after each pause
sub step_flap {
    my (@r) = @_;
    my $n = 2 + int($r[1] * 3);
    my @cmds;
    for my $i (0 .. $n - 1) {
        my $x = $r[2 + $i];
        my $scope = $x < 0.35 ? 'a' : $x < 0.7 ? 'b' : undef;
        push @cmds, [($i % 2 ? 'resume' : 'pause'), $scope, $r[6 + $i] * 0.06];
    }
    $STEP_DESC = 'flap: ' . join(', ', map { sprintf('%s %s (+%d ms)', $_->[0], $_->[1] // 'all', $_->[2] * 1000) } @cmds);
    my @res;
    for my $cmd (@cmds) {
        my ($what, $scope, $delay) = @$cmd;
        pump($delay);
        if ($what eq 'pause') {
            push @res, do_pause($scope, 0, 0);
            my @s = defined $scope ? ($scope) : configured();
            for my $i (1 .. 6) {
                my $s = $s[$i % @s];
                next if outstanding($s) + 1 > $CAP{$s};
                my $k = fresh_conn('one') or next;
                h1_send($k, new_req(scope => $s, kind => 'one'));
            }
        } else {
            push @res, do_resume($scope);
        }
    }
    return join('; ', @res);
}

# ---------------------------------------------------------------- run

start_nginx(conf(1), upgradable => 1);
is(scalar(worker_pids()), 4, 'nginx runs 4 workers');
# The master forks the cache manager after the workers.
ok(wait_for(sub { scalar(nginx_children(qr/cache manager/)) }), 'and a cache manager');

pump(1);
check_status('at start');

my @KINDS = ([pause => 22], [resume => 18], [reload => 7], [reload_c => 6], [kill_worker => 8],
             [kill_cm => 4], [upgrade => 4], [burst => 7], [idle => 5], [flap => 10]);
my $WSUM = 0;
$WSUM += $_->[1] for @KINDS;

my $t_end = time + $SECONDS;
while (time < $t_end && !$ABORT) {
    $STEP++;
    my @r = map { rand() } 1 .. 12;
    my $kind;
    my $x = $r[0] * $WSUM;
    for my $k (@KINDS) { $kind = $k->[0]; last if ($x -= $k->[1]) < 0 }
    $SINCE_CLEAR++;
    my $forced = (paused_now() || grep { !$M{$_}{det} } qw(a b c)) && $SINCE_CLEAR > 8;
    my $res;
    if ($forced) {
        $STEP_DESC = 'resume all (something was paused for 8 steps)';
        $res = do_resume(undef);
    } elsif ($kind eq 'pause') { $res = step_pause(@r) }
    elsif ($kind eq 'resume') { $res = step_resume(@r) }
    elsif ($kind eq 'reload') { $res = step_reload(0) }
    elsif ($kind eq 'reload_c') { $res = step_reload(1) }
    elsif ($kind eq 'kill_worker') { $res = step_kill_worker(@r) }
    elsif ($kind eq 'kill_cm') { $res = step_kill_cm() }
    elsif ($kind eq 'upgrade') { $res = step_upgrade() }
    elsif ($kind eq 'burst') { $res = step_burst(@r) }
    elsif ($kind eq 'flap') { $res = step_flap(@r) }
    else { $STEP_DESC = sprintf('load only for %.1f s', 0.5 + $r[1] * 1.5); pump(0.5 + $r[1] * 1.5); $res = '' }
    my $line = sprintf('step %d %s: %s%s; paused: %s', $STEP, rel(time), $STEP_DESC, length($res // '') ? " -> $res" : '',
                       join(',', map { $M{$_}{det} ? ($M{$_}{paused} ? $_ : ()) : "$_?" } qw(a b c)) || '-');
    push @STEPLOG, $line;
    note($line);
    last if $ABORT;
    pump(0.3 + $r[11] * 0.9);
    check_status('after the step');
    if ($NEED_CP && !paused_now()) { checkpoint("step $STEP") }
    $SINCE_CLEAR = 0 if !paused_now() && !grep { !$M{$_}{det} } qw(a b c);
}

# ---------------------------------------------------------------- the end

$STEP++;
$STEP_DESC = 'final: resume all';
my $fr = do_resume(undef);
push @STEPLOG, "step $STEP " . rel(time) . ": $STEP_DESC -> $fr";
note($STEPLOG[-1]);
pump(0.5);
check_status('after the final resume');
checkpoint('the final resume');

$STEP_DESC = 'final: load stopped';
$PAUSE_LOAD = 1;
{
    my $deadline = time + 10 * $SLOW;
    pump(0.05) while (%OUT || %RUNS) && time < $deadline;
}
for my $run (values %RUNS) {
    violation('answered', "nghttp run $run->{id} (" . join(' ', map { $_->{path} } @{ $run->{reqs} })
              . ', started ' . rel($run->{started}) . ') still runs 10 s after the load stopped');
    bg_kill($run->{h});
}
h2_poll();
for my $R (sort { $a->{id} <=> $b->{id} } values %OUT) {
    next if $R->{late_reported} || $R->{indet};
    violation('answered', rdesc($R) . ': no answer 10 s after the load stopped');
}
{
    my $deadline = time + 15 * $SLOW;
    pump(0.1) while @PENDING && time < $deadline;
    for my $u (@PENDING) {
        violation('answered', "the old master $u->{old_master} of an upgrade did not finish: its workers "
                  . join(' ', grep { pid_alive($_) } @{ $u->{old_workers} }) . ' still run after the final resume');
    }
}
sleep 0.3;
backend_scan();
for my $R (sort { $a->{id} <=> $b->{id} } values %REQ) {
    my $n = scalar @{ $R->{arr} };
    $CHECKS{abort}++ if $R->{kind} eq 'burst' && !$R->{indet} && covering($R->{scope}, $R->{sent});
    if (($R->{status} // 0) == 200) {
        $CHECKS{once}++;
        violation('once', rdesc($R) . ": answered 200, but reached its backend $n times") if $n != 1;
    } elsif (($R->{exempt} // '') =~ /^(?:reload|upgrade)$/ && $n) {
        violation('answered', rdesc($R) . ": closed without an answer during a $R->{exempt} (an old "
                  . 'worker shutting down), although it reached the backend at ' . rel($R->{arr}[0][0]));
    }
}
$_->{c}->close for values %CONN;
%CONN = ();

my $summary = join(', ', map { "$_=$STATS{$_}" } sort keys %STATS);
note("chaos: $STEP steps, $CHECKPOINTS checkpoints; $summary");
for my $inv (@INV_ORDER) {
    my @v = @{ $VIOL{$inv} || [] };
    ok(!@v, "$INV{$inv} (" . ($CHECKS{$inv} // 0) . ' checks)')
        or diag(join("\n", @v[0 .. ($#v < 9 ? $#v : 9)])
                . (@v > 10 ? "\n... and " . (@v - 10) . ' more' : ''));
}
if (grep { @{ $VIOL{$_} || [] } } @INV_ORDER) {
    diag("chaos: the steps of seed $SEED:\n" . join("\n", @STEPLOG));
    diag("chaos: FAILED with seed $SEED (replay: CHAOS_SEED=$SEED prove -I t/lib t/chaos.t)");
}
finish();
