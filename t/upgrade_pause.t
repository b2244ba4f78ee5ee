#!/usr/bin/perl
# upgrade_pause.t: a pause (or resume) sent during a binary upgrade, while both generations run, with
# intermission_state_file (the README: "A resume (or pause) answered by either generation is
# written to the file. The other generation's workers see that within 100 ms").
# The old configuration has a main server (OLD_PORT) and a control server (CTLOLD_PORT) that
# the new one lacks, and the new one has PORT2 and CTL2_PORT that the old one lacks, so the
# test reaches each generation on purpose (the shared ports go to either).
# (a) Nothing paused, USR2. A pause answered by the OLD generation (CTLOLD_PORT): within
#     1 s the new generation reports paused, and a request to the new generation (PORT2) is
#     held, not forwarded.
# (b) Everything resumed. A pause answered by the NEW generation (CTL2_PORT): within 1 s the
#     old generation reports paused, and a request to the old generation (OLD_PORT) is held.
# Then one resume releases every held request: all answered 200.
# (c) Nginx restarted with the old configuration, paused, USR2: the new generation starts
#     paused (state file) and holds nothing. A resume answered by the OLD generation:
#     within 1 s the new generation reports running; a request to it is answered 200.
# Seen with the module of 2026-11-21: in both directions the other generation stays
# unpaused and forwards the request to the backend at once. A worker reads the state file
# only on its tick, which runs only while it holds requests (or has drain waiters): a
# generation that holds nothing never learns of the pause. During the overlap of an upgrade
# a pause therefore closes the gates of one generation only; the requests the other one
# accepts reach the backend that is being worked on. In (c), for the same reason, the new
# generation keeps reporting paused after the resume (status, metrics, intermissionctl),
# for as long as it holds nothing; its next request waits for one tick (~100 ms) and is
# then passed.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

sub conf {
    my ($gen) = @_;
    my $loc = "location / { intermission on; proxy_set_header X-Worker \$pid; proxy_set_header X-Seq \$http_x_seq; "
            . "proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }";
    my $ctl = 'location /ctl/ { intermission_control; add_header X-Worker $pid always; }';
    my ($main, $c) = $gen eq 'old' ? ('OLD_PORT', 'CTLOLD_PORT') : ('PORT2_PORT', 'CTL2_PORT');
    return <<"CONF";
worker_processes 2;
http {
    intermission_state_file %%PREFIX%%/intermission.state;
    server { listen 127.0.0.1:%%PORT%%; $loc }
    server { listen 127.0.0.1:%%CTL_PORT%%; $ctl }
    server { listen 127.0.0.1:%%$main%%; $loc }
    server { listen 127.0.0.1:%%$c%%; $ctl }
}
CONF
}

unlink prefix() . '/intermission.state';
start_nginx(conf('old'), upgradable => 1);
my $u = upgrade_nginx(conf('new'));
my %oldw = map { $_ => 1 } @{ $u->{old_workers} };
my %neww = map { $_ => 1 } @{ $u->{new_workers} };

sub gen_status {
    my ($gen) = @_;
    my ($st, $h, $j) = ctl('GET', 'status', undef, port => port($gen eq 'old' ? 'CTLOLD_PORT' : 'CTL2_PORT'));
    my $w = $h && $h->{'x-worker'};
    Test::More::diag("$gen status answered by $w, a worker of the other generation")
        if $w && !($gen eq 'old' ? $oldw{$w} : $neww{$w});
    return $j && $j->{scopes}[0];
}

my @held;
sub probe {
    my ($what, $gen) = @_;
    my $p = port($gen eq 'old' ? 'OLD_PORT' : 'PORT2');
    my $c = http_connect($p);
    $c->send_request(path => "/probe/$what", headers => ['X-Seq' => "probe-$what"], keepalive => 0);
    my $answered = $c->readable(1);
    ok(!$answered, "$what: a request to the $gen generation is held, not forwarded")
        or diag('answered: ' . ($c->read_response(1) // 'close'));
    if ($answered) { $c->close } else { push @held, $c }
    sleep 0.2;
    is(scalar(grep { ($_->{seq} // '') eq "probe-$what" } backend_log()), 0, "$what: the backend did not get it");
}

# (a) pause answered by the old generation
{
    my $s = gen_status('new');
    is($s && $s->{paused}, 0, '(a) before: the new generation runs');
    my ($st, $h) = ctl('POST', 'pause', undef, port => port('CTLOLD_PORT'));
    is($st, 200, '(a) pause answered');
    ok($oldw{ $h->{'x-worker'} // 0 }, '(a) ... by the old generation');
    my $last;
    ok(wait_for(sub { $last = gen_status('new'); $last && $last->{paused} }, 1),
       '(a) the new generation reports paused within 1 s') or diag('new generation: paused=' . ($last && $last->{paused} // 'undef'));
    probe('a', 'new');
}

# (b) pause answered by the new generation
{
    is(scalar ctl('POST', 'resume', undef, port => port('CTLOLD_PORT')), 200, '(b) resume the old generation');
    is(scalar ctl('POST', 'resume', undef, port => port('CTL2_PORT')), 200, '(b) resume the new generation');
    my @r = read_responses(5, @held);
    sleep 0.2;
    my $s = gen_status('old');
    is($s && $s->{paused}, 0, '(b) before: the old generation runs');
    my ($st, $h) = ctl('POST', 'pause', undef, port => port('CTL2_PORT'));
    is($st, 200, '(b) pause answered');
    ok($neww{ $h->{'x-worker'} // 0 }, '(b) ... by the new generation');
    my $last;
    ok(wait_for(sub { $last = gen_status('old'); $last && $last->{paused} }, 1),
       '(b) the old generation reports paused within 1 s') or diag('old generation: paused=' . ($last && $last->{paused} // 'undef'));
    $_->close for @held;
    @held = ();
    probe('b', 'old');
}

# one resume releases everything (through the state file, for the other generation)
{
    is(scalar ctl('POST', 'resume', undef, port => port('CTL2_PORT')), 200, 'resume answered by the new generation');
    my @r = read_responses(10, @held);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), scalar @held, 'every held request answered 200');
    $_->close for @held;
}

sub end_upgrade {
    my ($what) = @_;
    ok(kill('WINCH', $u->{old_master}), "$what: WINCH to the old master");
    ok(wait_for(sub { !grep { pid_alive($_) } @{ $u->{old_workers} } }, 10), "$what: the old workers exit");
    ok(kill('QUIT', $u->{old_master}), "$what: QUIT to the old master");
    ok(wait_pid_exit($u->{old_master}, 10), "$what: the old master exits");
}
end_upgrade('(a, b)');
stop_nginx();

# (c) a resume answered by the old generation, the new one started paused and holds nothing
{
    unlink prefix() . '/intermission.state';
    start_nginx(conf('old'), upgradable => 1);
    is(scalar ctl('POST', 'pause', undef, port => port('CTLOLD_PORT')), 200, '(c) paused');
    $u = upgrade_nginx(conf('new'));
    %oldw = map { $_ => 1 } @{ $u->{old_workers} };
    %neww = map { $_ => 1 } @{ $u->{new_workers} };
    my $s = gen_status('new');
    is($s && $s->{paused}, 1, '(c) the new generation starts paused (state file)');
    my ($st, $h) = ctl('POST', 'resume', undef, port => port('CTLOLD_PORT'));
    is($st, 200, '(c) resume answered');
    ok($oldw{ $h->{'x-worker'} // 0 }, '(c) ... by the old generation');
    my $last;
    ok(wait_for(sub { $last = gen_status('new'); $last && !$last->{paused} }, 1),
       '(c) the new generation reports running within 1 s') or diag('new generation: paused=' . ($last && $last->{paused} // 'undef'));
    my $t0 = time;
    my ($rst) = http_get(port('PORT2'), '/c', headers => ['X-Seq' => 'probe-c'], timeout => 10);
    is($rst, 200, '(c) a request to the new generation is answered 200');
    note(sprintf('(c) ... after %.3f s', time - $t0));
    end_upgrade('(c)');
}
finish();
