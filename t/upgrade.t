#!/usr/bin/perl
# upgrade.t: a binary upgrade (SIGUSR2 to the master) while paused, with requests held, and
# the requirement "0 lost": every held request is eventually answered, and reaches the
# backend once.
#
# nginx runs as a daemon here (start_nginx(upgradable => 1)): a master started by its
# parent ignores USR2, and a master that is not a daemon ignores WINCH. After USR2 two
# generations run: the old master with its workers, and the new master (started from the
# same binary and nginx.conf) with its own. The listening sockets are shared, so both
# generations accept on them; when idle, the old workers take nearly every connection
# (they were first to wait on the sockets). Each generation has its own shared zone: the
# new master does not map the old one. Every control answer carries X-Worker ($pid), and
# the new configuration adds a control server (CTL2_PORT) and a main server (PORT2) that
# only the new generation listens on, so that the test reaches each generation on purpose.
#
# Part 1, no state file, "resume each generation" (the README's procedure): pause, 6 held by
# the old workers, USR2. The old workers keep holding them; the new generation starts
# unpaused (its own zone, nothing tells it about the pause); the operator pauses it too
# (CTL2). New requests, on either generation, are held. A resume to each generation
# releases everything: all answered 200, each once at the backend, the old requests through
# old workers. WINCH lets the old workers exit (nothing held), QUIT the old master; the new
# master is left (nginx.pid, the test's child) and works as usual.
# Part 2, no state file, WINCH before the resume (intermission_max_time 6s): the old workers
# stop accepting but stay alive holding; the control endpoint reaches only the new
# generation, whose resume cannot reach the old zone. The held requests are answered
# anyway, at intermission_max_time (on_timeout pass): none is lost, but they wait that long
# (with on_timeout reject they would get 503s, and worker_shutdown_timeout would close
# them). So the README's other advice without a state file, "finish the upgrade (WINCH,
# QUIT) before you resume", does not release them: the old master cannot finish while its
# workers hold requests.
# Part 3, intermission_state_file: the new generation starts paused (from the file); after
# WINCH, one resume answered by the new generation releases its own held requests and,
# through the file, those of the old workers, long before intermission_max_time (60 s).
# Part 4, intermission_state_file: a resume answered by an old worker releases the requests
# the new generation holds.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $MAIN = <<'CONF';
        location / {
            intermission on;
            %%MAX_TIME%%
            proxy_set_header X-Worker $pid;
            proxy_set_header X-Seq $http_x_seq;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
CONF

# $extra: directives at http level; $second: the servers only the new generation has
sub conf {
    my (%o) = @_;
    my $main = $MAIN;
    $main =~ s/%%MAX_TIME%%/$o{max_time} ? "intermission_max_time $o{max_time};" : ''/e;
    my $t = "worker_processes 2;\nhttp {\n" . ($o{http} // '')
          . "    server {\n        listen 127.0.0.1:%%PORT%%;\n$main    }\n"
          . "    server {\n        listen 127.0.0.1:%%CTL_PORT%%;\n"
          . "        location /ctl/ { intermission_control; add_header X-Worker \$pid always; }\n    }\n";
    if ($o{second}) {
        $t .= "    server {\n        listen 127.0.0.1:%%PORT2_PORT%%;\n$main    }\n"
            . "    server {\n        listen 127.0.0.1:%%CTL2_PORT%%;\n"
            . "        location /ctl/ { intermission_control; add_header X-Worker \$pid always; }\n    }\n";
    }
    return "$t}\n";
}

my $port = port('PORT');
my $pidfile = prefix() . '/nginx.pid';
my $oldbin = prefix() . '/nginx.pid.oldbin';
my $state = prefix() . '/intermission.state';

sub pid_in { my ($f) = @_; my $t = read_file_text($f); defined $t && $t =~ /^(\d+)/ ? $1 : undef }

sub send_req {
    my ($p, $path, $seq) = @_;
    my $c = http_connect($p);
    $c->send_request(path => $path, headers => ['X-Seq' => $seq], keepalive => 0);
    return $c;
}

# a control request answered by a worker of the given set (retried on the shared port
# until one of them takes the connection): (status, headers, json, raw, worker) or ()
sub gen_ctl {
    my ($set, $method, $cmd, $args) = @_;
    for (1 .. 300) {
        my ($st, $h, $j, $raw) = ctl($method, $cmd, $args);
        my $w = $h && $h->{'x-worker'};
        return ($st, $h, $j, $raw, $w) if defined $w && $set->{$w};
    }
    return ();
}

sub held_of { my ($j) = @_; my ($s) = grep { $_->{name} eq 'default' } @{ ($j && $j->{scopes}) || [] }; $s }

sub new_scope { scope_status('default', port => port('CTL2_PORT')) }

sub ppid_of {
    my ($pid) = @_;
    my $st = read_file_text("/proc/$pid/stat") // return undef;
    return (split / /, substr($st, rindex($st, ')') + 2))[1];
}

sub seqs_at_backend {
    my ($re) = @_;
    my %n;
    $n{ $_->{seq} }++ for grep { defined $_->{seq} && $_->{seq} =~ $re } backend_log();
    return \%n;
}

# WINCH and QUIT to the old master: its workers exit once they hold nothing, then it does
sub finish_upgrade {
    my ($u, $what, $timeout) = @_;
    ok(kill('WINCH', $u->{old_master}), "$what: WINCH to the old master");
    ok(wait_for(sub { !grep { pid_alive($_) } @{ $u->{old_workers} } }, $timeout // 10),
       "$what: the old workers exit") or diag("still alive: @{[grep { pid_alive($_) } @{ $u->{old_workers} }]}");
    ok(kill('QUIT', $u->{old_master}), "$what: QUIT to the old master");
    ok(wait_pid_exit($u->{old_master}, 10), "$what: the old master exits");
    ok(wait_for(sub { !-e $oldbin }), "$what: nginx.pid.oldbin removed");
    is(pid_in($pidfile), $u->{new_master}, "$what: nginx.pid names the new master");
    ok(pid_alive($u->{new_master}), "$what: the new master runs");
    is(scalar(master_worker_pids($u->{new_master})), 2, "$what: with its two workers");
}

# ============================================================ part 1
{
    start_nginx(conf(), upgradable => 1);
    my @w0 = worker_pids();
    is(scalar @w0, 2, 'part 1: two workers');
    is(pid_in($pidfile), nginx_pid(), 'part 1: nginx.pid names the master');

    is(scalar ctl('POST', 'enable'), 200, 'part 1: paused');
    my @old = map { send_req($port, "/p1/old/$_", "p1old$_") } 1 .. 6;
    ok(wait_held('default', 6), 'part 1: 6 requests held by the old workers');

    my $u = upgrade_nginx(conf(second => 1));
    my %oldw = map { $_ => 1 } @{ $u->{old_workers} };
    my %neww = map { $_ => 1 } @{ $u->{new_workers} };
    isnt($u->{new_master}, $u->{old_master}, 'part 1: USR2 started a new master');
    is(pid_in($oldbin), $u->{old_master}, 'part 1: nginx.pid.oldbin names the old master');
    is(pid_in($pidfile), $u->{new_master}, 'part 1: nginx.pid names the new master');
    is(scalar @{ $u->{new_workers} }, 2, 'part 1: the new master runs two workers');
    is(scalar(grep { pid_alive($_) } @{ $u->{old_workers} }), 2, 'part 1: the old workers still run');

    ok(none_readable(0.5, @old), 'part 1: the old requests are still held after USR2');
    is(scalar keys %{ seqs_at_backend(qr/^p1/) }, 0, 'part 1: the backend saw none of them');

    {
        my %by;
        for (1 .. 40) {
            my (undef, $h) = ctl('GET', 'status');
            my $w = $h && $h->{'x-worker'} // 0;
            $by{ $oldw{$w} ? 'old' : $neww{$w} ? 'new' : 'none' }++;
        }
        note('40 connections to the shared control port, answered by: '
           . join(', ', map { "$_ $by{$_}" } sort keys %by));
    }
    my $ns = new_scope();
    note('new generation after USR2 (no state file): ' . JSON::PP->new->canonical->encode($ns // {}));
    is($ns && $ns->{paused}, 0, 'part 1: the new generation starts unpaused (its own zone, no state file)');
    is($ns && $ns->{held}, 0, 'part 1: the new generation sees none of the old held requests');
    my (undef, undef, $oj, undef, $ow) = gen_ctl(\%oldw, 'GET', 'status');
    ok($ow, 'part 1: an old worker answers the shared control port') or diag('no answer from an old worker');
    my $os = held_of($oj);
    is($os && $os->{paused}, 1, 'part 1: the old generation is still paused');
    is($os && $os->{held}, 6, 'part 1: the old generation holds 6');

    # the operator keeps the gates closed: pause the new generation too
    my ($st, undef, $j) = ctl('POST', 'pause', undef, port => port('CTL2_PORT'));
    is($st, 200, 'part 1: pause sent to the new generation');
    is($j && $j->{scopes}[0]{changed}, 1, 'part 1: ... it was not paused before (changed=true)');

    my @new2 = map { send_req(port('PORT2'), "/p1/new2/$_", "p1new2$_") } 1 .. 3;
    my @any = map { send_req($port, "/p1/any/$_", "p1any$_") } 1 .. 4;
    my ($nh, $oh);
    ok(wait_for(sub {
        $nh = (new_scope() // {})->{held} // -1;
        my (undef, undef, $oj2) = gen_ctl(\%oldw, 'GET', 'status');
        $oh = (held_of($oj2) // {})->{held} // -1;
        $nh + $oh == 13;
    }, 10), 'part 1: 13 held over both generations') or diag("new held=$nh, old held=$oh");
    ok($nh >= 3, "part 1: the new generation holds the PORT2 requests (new=$nh, old=$oh)");
    ok(none_readable(0.3, @old, @new2, @any), 'part 1: nothing answered while both are paused');
    is(scalar keys %{ seqs_at_backend(qr/^p1/) }, 0, 'part 1: the backend saw nothing');

    # resume each generation
    ($st, undef, $j) = ctl('POST', 'resume', undef, port => port('CTL2_PORT'));
    is($st, 200, 'part 1: resume sent to the new generation');
    is($j && $j->{scopes}[0]{released}, $nh, "part 1: ... it released the new generation's $nh");
    my ($st2, undef, $j2, $raw2, $rw) = gen_ctl(\%oldw, 'POST', 'resume');
    is($st2, 200, "part 1: resume answered by old worker " . ($rw // 'none'));
    is($j2 && $j2->{scopes}[0]{released}, $oh, "part 1: ... it released the old generation's $oh")
        or diag($raw2 // '');

    my @r = read_responses(10, @old, @new2, @any);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 13, 'part 1: all 13 answered 200')
        or diag(join ' ', map { $_ ? $_->[0] : 'none' } @r);
    my $seen = seqs_at_backend(qr/^p1/);
    is(scalar keys %$seen, 13, 'part 1: the backend received all 13');
    is(scalar(grep { $_ != 1 } values %$seen), 0, 'part 1: each exactly once');
    my @log = grep { ($_->{seq} // '') =~ /^p1/ } backend_log();
    is(scalar(grep { $_->{seq} =~ /^p1old/ && $oldw{ $_->{worker} // 0 } } @log), 6,
       'part 1: the old requests were forwarded by old workers');
    is(scalar(grep { $_->{seq} =~ /^p1new2/ && $neww{ $_->{worker} // 0 } } @log), 3,
       'part 1: the PORT2 requests were forwarded by new workers');
    $_->close for @old, @new2, @any;

    finish_upgrade($u, 'part 1');
    is(ppid_of($u->{new_master}), $$, 'part 1: the new master is now the test\'s child (subreaper)');

    # the new generation alone: pause, hold, resume through the shared ports
    my ($pst, $ph) = ctl('POST', 'pause');
    is($pst, 200, 'part 1 after: paused');
    ok($neww{ $ph->{'x-worker'} // 0 }, 'part 1 after: a new worker answered');
    my @after = map { send_req($port, "/p1/after/$_", "p1after$_") } 1 .. 2;
    ok(wait_held('default', 2), 'part 1 after: 2 held');
    (undef, undef, $j) = ctl('POST', 'resume');
    is($j && $j->{scopes}[0]{released}, 2, 'part 1 after: resume released 2');
    @r = read_responses(5, @after);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'part 1 after: both answered 200');
    $_->close for @after;
    stop_nginx();
}

# ============================================================ part 2
{
    start_nginx(conf(max_time => '6s'), upgradable => 1);
    is(scalar ctl('POST', 'enable'), 200, 'part 2: paused');
    my @old = map { send_req($port, "/p2/old/$_", "p2old$_") } 1 .. 4;
    ok(wait_held('default', 4), 'part 2: 4 held by the old workers');
    my $t_held = time;

    my $u = upgrade_nginx(conf(max_time => '6s'));
    my %neww = map { $_ => 1 } @{ $u->{new_workers} };
    my %oldw = map { $_ => 1 } @{ $u->{old_workers} };
    ok(kill('WINCH', $u->{old_master}), 'part 2: WINCH to the old master before any resume');
    ok(wait_for(sub { !master_worker_pids($u->{old_master}) }), 'part 2: the old workers shut down');
    ok(none_readable(1, @old), 'part 2: the held requests stay held (not closed) after WINCH');
    ok(scalar(grep { pid_alive($_) } @{ $u->{old_workers} }) >= 1, 'part 2: an old worker stays alive, holding them');

    my ($st, $h, $j) = ctl('GET', 'status');
    ok($neww{ $h->{'x-worker'} // 0 }, 'part 2: after WINCH only the new generation answers');
    my $s = held_of($j);
    note('new generation status after WINCH: ' . JSON::PP->new->canonical->encode($s // {}));
    is($s && $s->{held}, 0, 'part 2: the new generation does not see the old held requests');

    ($st, $h, $j) = ctl('POST', 'resume');
    is($st, 200, 'part 2: resume answered (by the new generation)');
    my $t_resume = time;
    my $released = $j && $j->{scopes}[0]{released};
    note("part 2: resume answered by $h->{'x-worker'}, released=" . ($released // 'undef'));

    # 0 lost: they are all answered, by the resume or else at intermission_max_time
    my @r = read_responses(20, @old);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 4, 'part 2: all 4 held requests answered 200 (none lost)')
        or diag(join ' ', map { $_ ? $_->[0] : 'none' } @r);
    my @after = map { $_ ? sprintf('%.1f', $_->[3] - $t_resume) : 'never' } @r;
    my @since = map { $_ ? sprintf('%.1f', $_->[3] - $t_held) : 'never' } @r;
    note("part 2: answered @after s after the resume, @since s after they were held "
       . '(intermission_max_time 6s): the resume did not reach the old zone; they went at max_time');
    my $seen = seqs_at_backend(qr/^p2/);
    is_deeply([sort keys %$seen], [map { "p2old$_" } 1 .. 4], 'part 2: the backend received the 4');
    is(scalar(grep { $_ != 1 } values %$seen), 0, 'part 2: each exactly once');
    is(scalar(grep { ($_->{seq} // '') =~ /^p2/ && $oldw{ $_->{worker} // 0 } } backend_log()), 4,
       'part 2: forwarded by the old workers');
    $_->close for @old;

    ok(wait_for(sub { !grep { pid_alive($_) } @{ $u->{old_workers} } }, 10), 'part 2: the old workers exit');
    ok(kill('QUIT', $u->{old_master}), 'part 2: QUIT to the old master');
    ok(wait_pid_exit($u->{old_master}, 10), 'part 2: the old master exits');
    stop_nginx();
}

# ============================================================ parts 3 and 4: state file
my $SF = "    intermission_state_file %%PREFIX%%/intermission.state;\n";
{
    unlink $state;
    start_nginx(conf(http => $SF), upgradable => 1);
    is(scalar ctl('POST', 'enable'), 200, 'part 3: paused');
    ok(-s $state, 'part 3: the state file is written');
    my @old = map { send_req($port, "/p3/old/$_", "p3old$_") } 1 .. 3;
    ok(wait_held('default', 3), 'part 3: 3 held by the old workers');

    my $u = upgrade_nginx(conf(http => $SF, second => 1));
    my %oldw = map { $_ => 1 } @{ $u->{old_workers} };
    my %neww = map { $_ => 1 } @{ $u->{new_workers} };
    my $ns = new_scope();
    is($ns && $ns->{paused}, 1, 'part 3: the new generation starts paused (state file)');
    is($ns && $ns->{held}, 0, 'part 3: ... holding nothing yet');

    my @new2 = map { send_req(port('PORT2'), "/p3/new2/$_", "p3new2$_") } 1 .. 3;
    ok(wait_for(sub { ((new_scope() // {})->{held} // -1) == 3 }), 'part 3: 3 held by the new generation');

    ok(kill('WINCH', $u->{old_master}), 'part 3: WINCH to the old master');
    ok(wait_for(sub { !master_worker_pids($u->{old_master}) }), 'part 3: the old workers shut down');
    ok(none_readable(0.5, @old, @new2), 'part 3: all 6 still held');
    ok(scalar(grep { pid_alive($_) } @{ $u->{old_workers} }) >= 1, 'part 3: an old worker stays alive, holding');

    my ($st, $h, $j) = ctl('POST', 'resume');
    my $t_resume = time;
    is($st, 200, 'part 3: resume answered');
    ok($neww{ $h->{'x-worker'} // 0 }, 'part 3: ... by the new generation');
    is($j && $j->{scopes}[0]{released}, 3, "part 3: ... which released its own 3");

    my @r = read_responses(10, @old, @new2);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 6, 'part 3: all 6 answered 200')
        or diag(join ' ', map { $_ ? $_->[0] : 'none' } @r);
    my @late = grep { $_ && $_->[3] - $t_resume > 10 } @r;
    is(scalar @late, 0, 'part 3: the old ones within 10 s of the resume (max_time is 60 s): through the state file');
    note('part 3: old generation answered ' . join(' ', map { $_ ? sprintf('%.2f', $_->[3] - $t_resume) : 'never' } @r[0 .. 2])
       . ' s after the resume');
    my $seen = seqs_at_backend(qr/^p3/);
    is(scalar keys %$seen, 6, 'part 3: the backend received all 6');
    is(scalar(grep { $_ != 1 } values %$seen), 0, 'part 3: each exactly once');
    is(scalar(grep { ($_->{seq} // '') =~ /^p3old/ && $oldw{ $_->{worker} // 0 } } backend_log()), 3,
       'part 3: the old ones through old workers');
    ok(scalar(error_log_lines(qr/resumed by the state file/)) >= 1,
       'part 3: the error log shows the old generation resumed by the state file');
    $_->close for @old, @new2;

    ok(wait_for(sub { !grep { pid_alive($_) } @{ $u->{old_workers} } }, 10), 'part 3: the old workers exit');
    ok(kill('QUIT', $u->{old_master}), 'part 3: QUIT to the old master');
    ok(wait_pid_exit($u->{old_master}, 10), 'part 3: the old master exits');
    stop_nginx();
}

{
    unlink $state;
    start_nginx(conf(http => $SF), upgradable => 1);
    is(scalar ctl('POST', 'enable'), 200, 'part 4: paused');
    my @old = map { send_req($port, "/p4/old/$_", "p4old$_") } 1 .. 2;
    ok(wait_held('default', 2), 'part 4: 2 held by the old workers');

    my $u = upgrade_nginx(conf(http => $SF, second => 1));
    my %oldw = map { $_ => 1 } @{ $u->{old_workers} };
    my %neww = map { $_ => 1 } @{ $u->{new_workers} };
    my @new2 = map { send_req(port('PORT2'), "/p4/new2/$_", "p4new2$_") } 1 .. 3;
    ok(wait_for(sub { ((new_scope() // {})->{held} // -1) == 3 }), 'part 4: 3 held by the new generation');

    my ($st, undef, $j, $raw, $w) = gen_ctl(\%oldw, 'POST', 'resume');
    my $t_resume = time;
    is($st, 200, 'part 4: resume answered by old worker ' . ($w // 'none'));
    is($j && $j->{scopes}[0]{released}, 2, 'part 4: ... which released the old generation\'s 2') or diag($raw // '');

    my @r = read_responses(10, @old, @new2);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 5, 'part 4: all 5 answered 200')
        or diag(join ' ', map { $_ ? $_->[0] : 'none' } @r);
    is(scalar(grep { $_ && $_->[3] - $t_resume > 10 } @r), 0, 'part 4: within 10 s of the resume');
    my $seen = seqs_at_backend(qr/^p4/);
    is(scalar keys %$seen, 5, 'part 4: the backend received all 5');
    is(scalar(grep { $_ != 1 } values %$seen), 0, 'part 4: each exactly once');
    is(scalar(grep { ($_->{seq} // '') =~ /^p4new2/ && $neww{ $_->{worker} // 0 } } backend_log()), 3,
       'part 4: the new ones through new workers');
    my $ns = new_scope();
    is($ns && $ns->{paused}, 0, 'part 4: the new generation is resumed');
    is($ns && $ns->{held}, 0, 'part 4: ... and holds nothing');
    $_->close for @old, @new2;

    finish_upgrade($u, 'part 4');
}

finish();
