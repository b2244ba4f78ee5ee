#!/usr/bin/perl
# resume_released.t: the "released" figure of a resume answer counts the requests that
# resume releases, and no others, also while another worker is slow to act on an earlier
# resume. worker_processes 2 (reuseport). Keep-alive connections are pinned to worker A
# (the control connection, 2 held requests) and to worker B (2 held requests); /who
# (intermission off) answers the worker's pid. Worker B is stopped (SIGSTOP) to stand for a
# busy worker: it cannot take the eventfd wake-up.
# - pause; 4 held (2 in A, 2 in B); SIGSTOP B;
# - resume R1 (answered by A): released=4 (A releases its 2 now, B's 2 go when B runs);
#   A's 2 are answered 200;
# - pause P2 (by A): changed=true; nothing new is held;
# - resume R2 (by A): released=0, since P2 held nothing and B's 2 belong to R1;
# - SIGCONT B: B's 2 are answered 200, each reaching the backend once;
# - counters.released == counters.held == 4 == the sum of "released" over the answers.
# Seen with the module of 2026-11-21: R2 answers released=2. A resume's answer reports
# held_now() (every worker's held gauge, read right after the resume), which still counts
# B's requests that R1 released but B has not yet taken out of its queue: an operator (or
# intermissionctl's "released" column) adds them twice.
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
            proxy_set_header X-Seq $http_x_seq;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location = /who {
            intermission off;
            return 200 "$pid";
        }
    }
    server {
        listen 127.0.0.1:%%CTL_PORT%% reuseport;
        location /ctl/ {
            intermission_control;
            add_header X-Worker $pid always;
        }
    }
}
CONF

my $port = port('PORT');
my @w = worker_pids();
is(scalar @w, 2, 'two workers');

# the control connection: pinned to whichever worker takes it, A
my $ctl = http_connect(port('CTL_PORT'));
my ($st, $h) = $ctl->request(method => 'GET', path => '/ctl/status', keepalive => 1);
my $A = $h && $h->{'x-worker'};
ok($A && grep({ $_ == $A } @w), "control connection pinned to worker $A");
my ($B) = grep { $_ != ($A // 0) } @w;

sub cmd {
    my ($method, $cmd, $args) = @_;
    my ($s, $hh, $body) = $ctl->request(method => $method, path => "/ctl/$cmd" . ($args ? "?$args" : ''),
                                        keepalive => 1);
    my $j = eval { JSON::PP->new->decode($body // '') };
    Test::More::diag("answered by $hh->{'x-worker'}, not $A") if $hh && ($hh->{'x-worker'} // 0) != $A;
    return ($s, $j);
}

my %pinned = ($A => [], $B => []);
my @spare;
for (1 .. 200) {
    last unless grep { @{ $pinned{$_} } < 2 } $A, $B;
    my $c = http_connect($port);
    my ($s, undef, $body) = $c->request(method => 'GET', path => '/who', keepalive => 1);
    last unless $s && $s == 200;
    if ($pinned{$body} && @{ $pinned{$body} } < 2) { push @{ $pinned{$body} }, $c } else { push @spare, $c }
}
$_->close for @spare;
ok(@{ $pinned{$A} } == 2 && @{ $pinned{$B} } == 2, 'two connections pinned to each worker');

my ($s1, $j) = cmd('POST', 'pause');
is($s1, 200, 'paused');
for my $wk ($A, $B) {
    my $i = 0;
    $_->send_request(path => "/rr/$wk/" . $i, headers => ['X-Seq' => "rr-$wk-" . $i++], keepalive => 0) for @{ $pinned{$wk} };
}
my $held;
ok(wait_for(sub { (undef, $j) = cmd('GET', 'status'); $held = $j && $j->{scopes}[0]{held}; ($held // 0) == 4 }),
   '4 held, 2 in each worker') or diag('held=' . ($held // 'undef'));

ok(kill('STOP', $B), "worker $B stopped (SIGSTOP)");
my $stopped = 1;
END { kill 'CONT', $B if $stopped && $B }

my @released;
(undef, $j) = cmd('POST', 'resume');
push @released, $j && $j->{scopes}[0]{released};
is($released[-1], 4, 'resume R1: released=4');
my @r = read_responses(5, @{ $pinned{$A} });
is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, "R1: worker ${A}'s 2 answered 200");

(undef, $j) = cmd('POST', 'pause');
is($j && $j->{scopes}[0]{changed}, 1, 'pause P2: changed=true');
note("P2 answers held=" . ($j && $j->{scopes}[0]{held} // 'undef') . " (worker ${B}'s, released by R1, still in its queue)");

(undef, $j) = cmd('POST', 'resume');
push @released, $j && $j->{scopes}[0]{released};
is($released[-1], 0, 'resume R2: released=0 (P2 held nothing; B\'s 2 were released by R1)')
    or diag('R2 answer: ' . JSON::PP->new->canonical->encode($j // {}));

ok(kill('CONT', $B), "worker $B continues (SIGCONT)");
$stopped = 0;
@r = read_responses(10, @{ $pinned{$B} });
is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, "worker ${B}'s 2 answered 200");

sleep 0.3;
my %n;
$n{ $_->{seq} }++ for grep { ($_->{seq} // '') =~ /^rr-/ } backend_log();
is(scalar keys %n, 4, 'the backend received the 4');
is(scalar(grep { $_ != 1 } values %n), 0, 'each exactly once');

(undef, $j) = cmd('GET', 'status');
my $c = $j && $j->{scopes}[0]{counters};
is($c && $c->{held}, 4, 'counters.held=4');
is($c && $c->{released}, 4, 'counters.released=4');
my $sum = 0;
$sum += $_ // 0 for @released;
is($sum, $c && $c->{released}, 'the resume answers add up to counters.released');

$ctl->close;
$_->close for @{ $pinned{$A} }, @{ $pinned{$B} };
finish();
