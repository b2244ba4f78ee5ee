#!/usr/bin/perl
# intermissionctl_autoresume.t: `intermissionctl run --auto-resume 3s` passes the module's
# dead-man switch. intermissionctl is killed with SIGKILL while COMMAND runs (it cannot
# resume anything): nginx stays paused with its held requests and an auto-resume deadline,
# then resumes by itself; the held requests are answered 200 and recorded once, and
# status shows nothing paused. The same for a fleet of two (start_instance): both resume.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $TPL = <<'CONF';
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

start_nginx($TPL);
my $two = start_instance('two', $TPL);
my @N = ({ name => 'main', port => port('PORT'), st => sub { scope_status('default') } },
         { name => 'two', port => $two->port, st => sub { $two->scope_status('default') } });
my @E = ('http://127.0.0.1:' . port('CTL_PORT') . '/ctl/', 'http://127.0.0.1:' . $two->ctl_port . '/ctl/');

sub count_uri { my ($uri) = @_; scalar grep { $_->{uri} eq $uri } backend_log() }

for my $case ([1, 'one endpoint'], [2, 'a fleet of two']) {
    my ($n, $what) = @$case;
    my @nodes = @N[0 .. $n - 1];
    my $tag = "ar$n";
    my $h = intermissionctl_bg('run', (map { ('--endpoint', $_) } @E[0 .. $n - 1]),
                               '--auto-resume', '3s', '--', gated_command($tag));
    my $cmd_pid = gate_started($tag, 10);
    ok($cmd_pid, "$what: COMMAND started");
    my (@c, @paths);
    for my $node (@nodes) {
        for my $k (1 .. 2) {
            my $p = "/$tag/$node->{name}/$k";
            my $c = http_connect($node->{port});
            $c->send_request(path => $p, keepalive => 0);
            push @c, $c;
            push @paths, $p;
        }
    }
    for my $node (@nodes) {
        ok(wait_for(sub { my $s = $node->{st}->(); $s && $s->{held} == 2 }),
           "$what: two held on $node->{name}");
    }
    my ($rc) = bg_kill($h, 'KILL');
    is($rc, 128 + 9, "$what: intermissionctl killed with SIGKILL");
    for my $node (@nodes) {
        my $s = $node->{st}->();
        ok($s && $s->{paused}, "$what: $node->{name} still paused right after the kill");
        ok($s && defined $s->{auto_resume_in_ms}, "$what: $node->{name} has an auto-resume deadline")
            or diag explain $s;
    }
    my @r = read_responses(10, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), scalar @paths,
       "$what: the held requests answered 200 without anyone resuming");
    my @bad = grep { count_uri($_) != 1 } @paths;
    ok(!@bad, "$what: each recorded by the backend exactly once") or diag("@bad");
    for my $node (@nodes) {
        my $s = $node->{st}->();
        ok($s && !$s->{paused}, "$what: $node->{name} resumed by itself");
    }
    is(scalar(error_log_lines(qr/auto-resumed/)), $n, "$what: main logged its auto-resume");
    is(scalar($two->error_log_lines(qr/auto-resumed/)), $n - 1,
       "$what: two logged its auto-resume") if $n == 2;
    gate_open($tag);
    ok(wait_for(sub { !kill 0, $cmd_pid }, 5), "$what: the orphaned COMMAND ended") if $cmd_pid;
    $_->close for @c;
}

finish();
