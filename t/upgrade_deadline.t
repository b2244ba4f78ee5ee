#!/usr/bin/perl
# upgrade_deadline.t: during a binary upgrade with intermission_state_file, a new auto-resume
# deadline answered by one generation reaches the other, even though the scope is paused in
# both already. Otherwise the other generation resumes at the old deadline, writes that to
# the state file, and the generation that was told to wait follows it: the scope resumes
# seconds early and the held requests reach a backend still under maintenance.
# Steps: pause auto_resume=2s; hold a request in the old generation; USR2 (the new binary
# starts paused, deadline +2 s); extend through the new generation (auto_resume=20s); wait
# past the first deadline: both generations still paused, the held request still held and
# not at the backend. A resume then releases it. Found by t/chaos.t (seed 43980928).
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

sub conf {
    my ($gen) = @_;
    my $loc = "location / { intermission on; proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }";
    my $ctl = 'location /ctl/ { intermission_control; }';
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
sub gen_ctl {
    my ($gen, $method, $cmd, $args) = @_;
    return ctl($method, $cmd, $args, port => port($gen eq 'old' ? 'CTLOLD_PORT' : 'CTL2_PORT'));
}
sub paused_in { my ($gen) = @_; my (undef, undef, $j) = gen_ctl($gen, 'GET', 'status'); $j && $j->{scopes}[0]{paused} }

unlink prefix() . '/intermission.state';
start_nginx(conf('old'), upgradable => 1);
is(scalar gen_ctl('old', 'POST', 'pause', 'auto_resume=2s'), 200, 'paused, auto-resume in 2 s');
my $held = http_connect(port('OLD_PORT'));
$held->send_request(path => '/held', keepalive => 0);
ok(wait_held('default', 1), 'a request is held in the old generation');
my $t0 = time;
upgrade_nginx(conf('new'));
ok(paused_in('new'), 'the new generation starts paused');
is(scalar gen_ctl('new', 'POST', 'pause', 'auto_resume=20s'), 200, 'the new generation moves the deadline to +20 s');
sleep 0.5;    # the old workers look at the state file every 100 ms
my (undef, undef, $j) = gen_ctl('old', 'GET', 'status');
my $in = $j && $j->{scopes}[0]{auto_resume_in_ms};
cmp_ok($in // 0, '>', 10_000, 'the old generation has the new deadline too') or diag("auto_resume_in_ms: " . ($in // 'none'));
sleep 2.5 - (time - $t0) if time - $t0 < 2.5;
sleep 0.5;
ok(paused_in('new'), 'past the first deadline: the new generation is still paused');
ok(paused_in('old'), '... and so is the old one');
ok(!$held->readable(0), 'the held request is still held');
is(scalar(grep { $_->{uri} eq '/held' } backend_log()), 0, '... and not at the backend');
is(scalar gen_ctl('new', 'POST', 'resume'), 200, 'resumed through the new generation');
my ($r) = read_responses(5, $held);
is($r && $r->[0], 200, 'the held request is answered 200');
finish();
