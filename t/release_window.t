#!/usr/bin/perl
# release_window.t: `intermission_release_window N`: while a scope releases, at most N of
# its released requests are in flight over the whole nginx (every worker, the old ones of a
# reload), and the next oldest held request over all workers goes as one ends. The
# recording backend answers each request after ?sleep=ms; a request is at the backend from
# the time it read its head until that plus its sleep, so the number of overlapping
# intervals is how many the backend had at once (a request nginx sent early would overlap).
# Each block has a scope of its own.
# (1) 4 workers (reuseport), window 4: 40 held (X-Seq 1..40, sent 15 ms apart, spread over
#     the workers), 150 ms each: all answered 200; the backend never has more than 4 and
#     does have 4; it takes >= 1.2 s (10 rounds of 150 ms; without the window 0.15 s); the
#     order over the workers is by arrival: the longest increasing run of X-Seq at the
#     backend covers >= 90 % (without the window, per worker only).
# (2) window 1: 10 held over 2 workers: the backend gets them one at a time, in exactly
#     the order they arrived.
# (3) window 1: A (3 s at the backend) and B held; resume; A's client leaves 0.3 s later:
#     B reaches the backend within 1 s of that (its turn is A's, freed), not after 3 s.
# (4) window 1: 5 held, resume; 2 new requests sent during the release wait behind them:
#     the backend gets 1..7 one at a time, in that order.
# (5) A reload during a windowed release (window 2, 1 worker, 300 ms each): 10 held,
#     resume, reload 0.4 s later, 3 new requests to the new worker during the release: all
#     13 answered 200, the backend never has more than 2 (the old worker's turns count for
#     the new one), the new requests after the held ones.
# (6) window 2 and `intermission_release_rate 5r/s`: 6 held, 600 ms each: never more than 2
#     at once, and no two arrivals closer than the rate allows (150 ms, the rate's 200 ms
#     with slack).
# (7) `intermission_release_window off`: 10 held, 300 ms each: all 10 at the backend at
#     once (the release as before).
# (8) A worker that does not take its turn does not hold up the others: 4 workers, worker B
#     holds the 2 oldest requests (on connections pinned to it), worker A the next 2; B is
#     stopped (SIGSTOP), the resume: A's 2 are answered within 1 s (they wait for B at most
#     100 ms, then go). SIGCONT: B's 2 are answered too. Seen with the first version of the
#     window: A's waited for B for as long as B was stopped.
# (9) The window starts small: window 16, 30 held over 4 workers, 400 ms each: the release
#     lets 4 go first (the slow start), one more per answer, so exactly 4 reach the backend
#     before the first answer, and the backend has 16 at once later (4, 8, 16, ...): a
#     backend that has just restarted gets a few requests first, and the first answers do
#     not wait behind a whole window's.
use strict;
use warnings;
use Test::More;
use List::Util qw(max);
use Time::HiRes qw(time sleep);
use Intermission::Test;

sub loc {
    my ($scope, $extra) = @_;
    return "location /$scope/ { intermission $scope; $extra "
         . 'proxy_set_header X-Seq $http_x_seq; proxy_set_header X-Worker $pid; '
         . 'proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }';
}

sub conf {
    my ($workers) = @_;
    my $locs = join "\n        ",
        loc('w4', 'intermission_release_window 4;'),
        loc('w1', 'intermission_release_window 1;'),
        loc('ab', 'intermission_release_window 1;'),
        loc('nw', 'intermission_release_window 1;'),
        loc('rl', 'intermission_release_window 2;'),
        loc('wr', 'intermission_release_window 2; intermission_release_rate 5r/s;'),
        loc('nowin', 'intermission_release_window off;'),
        loc('st', 'intermission_release_window 4;'),
        loc('ramp', 'intermission_release_window 16;'),
        'location = /who { intermission off; return 200 "$pid"; }',
        'location /ctl/ { intermission_control; }';
    return <<"CONF";
worker_processes $workers;
http {
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        $locs
    }
    %%CONTROL_SERVER%%
}
CONF
}

my $port = port('PORT');

sub send_seq {
    my ($path, $seq) = @_;
    my $c = http_connect($port);
    $c->send_request(path => $path, headers => ['X-Seq' => $seq], keepalive => 0);
    return $c;
}

# the backend's entries for a scope, in arrival order
sub at_backend { my ($scope) = @_; grep { $_->{uri} =~ m{^/\Q$scope\E/} } backend_log() }

sub hold_n {
    my ($scope, $n, $ms, $gap) = @_;
    my @c = map { my $c = send_seq("/$scope/$_?sleep=$ms", $_); sleep $gap if $gap; $c } 1 .. $n;
    ok(wait_held($scope, $n), "$scope: $n held");
    return @c;
}

sub all_200 {
    my ($what, $timeout, @c) = @_;
    my @r = read_responses($timeout, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), scalar @c, "$what: all " . scalar(@c) . ' answered 200')
        or diag(join ' ', map { $_ ? $_->[0] : 'none' } @r);
    $_->close for @c;
    return @r;
}

start_nginx(conf(4));
is(scalar ctl('POST', 'pause'), 200, 'paused');

# ---- (1) 4 workers, window 4
{
    my @c = hold_n('w4', 40, 150, 0.015);
    my $t = time;
    my (undef, undef, $j) = ctl('POST', 'resume', 'scope=w4');
    is(($j->{scopes}[0] || {})->{released}, 40, '(1) the resume releases 40');
    all_200('(1)', 20, @c);
    my @e = at_backend('w4');
    is(scalar @e, 40, '(1) the backend got 40');
    my %workers = map { $_->{worker} => 1 } @e;
    note('(1) held by ' . scalar(keys %workers) . ' workers');
    cmp_ok(scalar keys %workers, '>=', 2, '(1) held by more than one worker');
    my $most = most_at_once(@e);
    is($most, 4, '(1) the backend had at most 4 at once, and 4');
    my $span = $e[-1]{t_head} - $e[0]{t_head};
    cmp_ok($span, '>=', 1.2, sprintf('(1) the 40 took %.2f s to reach it (10 rounds of 150 ms)', $span));
    my @seq = map { $_->{seq} } @e;
    my $l = lis(@seq);
    note("(1) backend order: @seq");
    cmp_ok($l / 40, '>=', 0.9, "(1) by arrival over the workers: increasing run $l of 40");
    ctl('POST', 'pause', 'scope=w4');
}

# ---- (2) window 1: one at a time, in arrival order
{
    my @c = hold_n('w1', 10, 50, 0.01);
    ctl('POST', 'resume', 'scope=w1');
    all_200('(2)', 10, @c);
    my @e = at_backend('w1');
    is(most_at_once(@e), 1, '(2) one at a time');
    is(join(' ', map { $_->{seq} } @e), join(' ', 1 .. 10), '(2) exactly in arrival order');
    my %workers = map { $_->{worker} => 1 } @e;
    note('(2) held by ' . scalar(keys %workers) . ' workers');
}

# ---- (3) a client that leaves frees its turn
{
    my $a = send_seq('/ab/a?sleep=3000', 'a');
    sleep 0.02;
    my $b = send_seq('/ab/b?sleep=10', 'b');
    ok(wait_held('ab', 2), '(3) A and B held');
    ctl('POST', 'resume', 'scope=ab');
    ok(wait_for(sub { grep { $_->{seq} eq 'a' } at_backend('ab') }, 2), '(3) A reached the backend');
    sleep 0.3;
    is(scalar(grep { $_->{seq} eq 'b' } at_backend('ab')), 0, '(3) B waits for its turn');
    my $t = time;
    $a->close;
    ok(wait_for(sub { grep { $_->{seq} eq 'b' } at_backend('ab') }, 1),
       '(3) A\'s client left: B reached the backend within 1 s') or diag(sprintf 'after %.2f s', time - $t);
    all_200('(3) B', 5, $b);
}

# ---- (4) new requests during a windowed release wait behind the held ones
{
    my @c = hold_n('nw', 5, 100, 0.01);
    ctl('POST', 'resume', 'scope=nw');
    sleep 0.05;
    push @c, send_seq("/nw/6?sleep=100", 6);
    sleep 0.01;
    push @c, send_seq("/nw/7?sleep=100", 7);
    all_200('(4)', 10, @c);
    my @e = at_backend('nw');
    is(most_at_once(@e), 1, '(4) one at a time, the new ones too');
    is(join(' ', map { $_->{seq} } @e), join(' ', 1 .. 7), '(4) the new ones after the held ones');
}

stop_nginx();

# ---- (5) a reload during a windowed release
{
    start_nginx(conf(1));
    is(scalar ctl('POST', 'pause', 'scope=rl'), 200, '(5) paused');
    my @c = hold_n('rl', 10, 300, 0.01);
    ctl('POST', 'resume', 'scope=rl');
    sleep 0.4;
    my ($old, $new) = reload_nginx();
    push @c, map { my $c = send_seq("/rl/n$_?sleep=300", "n$_"); sleep 0.01; $c } 1 .. 3;
    all_200('(5)', 15, @c);
    my @e = at_backend('rl');
    is(scalar @e, 13, '(5) the backend got 13');
    is(most_at_once(@e), 2, '(5) never more than 2 at once, old and new workers together');
    my %w = map { $_->{worker} => 1 } @e;
    cmp_ok(scalar keys %w, '>=', 2, '(5) from the old and the new worker');
    is(join(' ', map { $_->{seq} } @e[10 .. 12]), 'n1 n2 n3', '(5) the new ones after the held ones');
}

# ---- (6) the window and a rate
{
    is(scalar ctl('POST', 'pause', 'scope=wr'), 200, '(6) paused');
    my @c = hold_n('wr', 6, 600, 0.01);
    ctl('POST', 'resume', 'scope=wr');
    all_200('(6)', 10, @c);
    my @e = at_backend('wr');
    cmp_ok(most_at_once(@e), '<=', 2, '(6) never more than 2 at once');
    my @gaps = map { $e[$_]{t_head} - $e[$_ - 1]{t_head} } 1 .. $#e;
    note('(6) gaps: ' . join ' ', map { sprintf '%.3f', $_ } @gaps);
    cmp_ok(List::Util::min(@gaps), '>=', 0.15, '(6) no two closer than the rate allows');
}

# ---- (7) off
{
    is(scalar ctl('POST', 'pause', 'scope=nowin'), 200, '(7) paused');
    my @c = hold_n('nowin', 10, 300, 0.01);
    ctl('POST', 'resume', 'scope=nowin');
    all_200('(7)', 10, @c);
    is(most_at_once(at_backend('nowin')), 10, '(7) all 10 at the backend at once');
}

# ---- (8) a stopped worker does not hold up the others
{
    stop_nginx();
    start_nginx(conf(4));
    is(scalar ctl('POST', 'pause', 'scope=st'), 200, '(8) paused');
    # three on each: two for held requests, one for the control requests (a stopped
    # worker would not answer them)
    my %pinned = %{ pinned_connections($port, 3) };
    my ($b, $a) = sort keys %pinned;
    ok($a && $b && @{ $pinned{$a} } >= 3 && @{ $pinned{$b} } >= 2, '(8) connections pinned to each of two workers');
    my $i = 0;
    for my $wk ($b, $a) {
        for my $c (@{ $pinned{$wk} }[0, 1]) {
            $c->send_request(path => "/st/$wk/" . $i++ . '?sleep=10', keepalive => 0);
            ok(wait_held('st', $i), "(8) request $i held (worker $wk)");
        }
    }
    ok(kill('STOP', $b), "(8) worker $b (the 2 oldest) stopped");
    my ($rs) = $pinned{$a}[2]->request(method => 'POST', path => '/ctl/resume?scope=st', keepalive => 1);
    is($rs, 200, "(8) resumed through worker $a");
    my @r = read_responses(1, @{ $pinned{$a} }[0, 1]);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, sprintf('(8) worker %s\'s 2 answered within 1 s', $a));
    kill 'CONT', $b;
    @r = read_responses(5, @{ $pinned{$b} }[0, 1]);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, "(8) then worker $b\'s 2");
    $_->close for map { @$_ } values %pinned;
}

# ---- (9) the slow start
{
    is(scalar ctl('POST', 'pause', 'scope=ramp'), 200, '(9) paused');
    my @c = hold_n('ramp', 30, 400, 0.005);
    ctl('POST', 'resume', 'scope=ramp');
    all_200('(9)', 30, @c);
    my @e = at_backend('ramp');
    is(scalar @e, 30, '(9) the backend got 30');
    my $first_end = $e[0]{t_head} + 0.4;
    my $before = grep { $_->{t_head} < $first_end - 0.05 } @e;
    is($before, 4, '(9) 4 reached the backend before the first answer');
    is(most_at_once(@e), 16, '(9) then the window grew to 16, and no more');
}

finish();
