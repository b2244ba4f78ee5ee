#!/usr/bin/perl
# stop.t: a graceful stop (QUIT to the master: `nginx -s quit`, `systemctl stop`) while
# requests are held. nginx closes every listening socket at once, the control endpoint's too,
# so no resume can come: the workers let their held requests go to the backend at once,
# counted as released, with an [error] line per scope, and the pause itself stays (the state
# file keeps it for the next start). A reload and the old generation of a binary upgrade get
# the same QUIT, and must keep holding until the resume.
# (1) Scope x paused with 4 held, scope y resumed with 2 still waiting for their paced
#     release (1r/m, burst 1): QUIT. All 6 are answered 200 by the backend within 1 s,
#     counted as released ($intermission_result), nginx exits, the error log names both.
# (2) The next start (state file) is paused again; a resume releases what it holds.
# (3) A reload while holding: the old workers keep holding, log no release, and a resume
#     releases them.
# (4) A reload while holding, then QUIT before any resume: the new workers stop for real
#     and the old ones, which the reload left holding, let their requests go too.
# (5) A reload to a configuration that no longer loads the module is a real stop for the
#     old workers: their held requests are answered.
# (6) A binary upgrade: the old master gets QUIT while its workers hold requests. They keep
#     them until a resume answered by the new generation (through the state file).
# Seen with the module of 2026-12-02: in (1), (4) and (5) nothing reached the backend; the
# held requests waited for a resume that could no longer come, until the harness's TERM 5 s
# after the QUIT (as Debian's unit: QUIT, 5 s, then TERM) closed them with an empty reply.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

sub conf {
    my (%o) = @_;
    my $proxy = 'proxy_set_header X-Worker $pid; proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;';
    return <<"CONF" if $o{no_module};
worker_processes 2;
http {
    server { listen 127.0.0.1:%%PORT%%; location / { $proxy } }
    server { listen 127.0.0.1:%%CTL_PORT%%; location / { return 404; } }
}
CONF
    return <<"CONF";
worker_processes 2;
http {
    intermission_state_file %%PREFIX%%/intermission.state;
    log_format result '\$request_uri \$intermission_result \$status';
    access_log %%PREFIX%%/access.log result;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { intermission x; $proxy }
        location /paced/ {
            intermission y;
            intermission_release_rate 1r/m burst=1;
            $proxy
        }
    }
    %%CONTROL_SERVER%%
}
CONF
}

my $port = port('PORT');
my $state = prefix() . '/intermission.state';
unlink $state;

sub stop_lines { error_log_lines(qr/intermission: nginx is stopping: released/) }

# -> the released count of scope $s's stop lines since line $from
sub released_logged {
    my ($s, $from) = @_;
    my @l = stop_lines();
    my $n = 0;
    $n += $_ for grep { defined } map { /released (\d+) held request\(s\) of scope "\Q$s\E"/ ? $1 : undef }
                  @l[$from .. $#l];
    return $n;
}

sub hold {
    my ($tag, $n, $path) = @_;
    $path //= '/';
    my @c = map { http_connect($port) } 1 .. $n;
    $c[$_]->send_request(path => "$path$tag$_", headers => ['X-Seq' => "$tag$_"], keepalive => 0)
        for 0 .. $n - 1;
    return @c;
}

sub answered_200 {
    my ($what, $timeout, $t0, @c) = @_;
    my @r = read_responses($timeout, @c);
    my $ok = grep { $_ && $_->[0] == 200 } @r;
    is($ok, scalar @c, "$what: all " . scalar(@c) . " answered 200");
    my ($last) = sort { $b <=> $a } map { $_->[3] } grep { $_ } @r;
    note(sprintf('%s: the last answer %.3f s after', $what, $last - $t0)) if defined $last;
    $_->close for @c;
    return defined $last ? $last - $t0 : undef;
}

sub at_backend { my ($tag) = @_; scalar grep { ($_->{seq} // '') =~ /^\Q$tag\E\d+$/ } backend_log() }

# (1) a real stop releases everything at once
start_nginx(conf());
is(scalar ctl('POST', 'pause', 'scope=x'), 200, '(1) x paused');
is(scalar ctl('POST', 'pause', 'scope=y'), 200, '(1) y paused');
my @x = hold('quit', 4);
my @y = hold('paced', 3, '/paced/');
ok(wait_held('x', 4) && wait_held('y', 3), '(1) 4 held in x, 3 in y');
is(scalar ctl('POST', 'resume', 'scope=y'), 200, '(1) y resumed');
my ($first) = read_responses(5, shift @y);
is($first && $first->[0], 200, '(1) y: the first of its paced release is answered');
ok(wait_held('y', 2), '(1) y: the other 2 wait for their tokens (1r/m)');
ok(none_readable(0.3, @x, @y), '(1) nothing else answered');
my $master = nginx_pid();
my $t0 = time;
ok(kill('QUIT', $master), '(1) QUIT to the master');
my $took = answered_200('(1) the held requests', 5, $t0, @x, @y);
ok(defined $took && $took < 1, '(1) ... within 1 s of the QUIT');
is(at_backend('quit'), 4, '(1) the backend got each of x');
is(at_backend('paced'), 3, '(1) ... and of y');
ok(wait_pid_exit($master, 5), '(1) nginx exits');
stop_nginx();
is(released_logged('x', 0), 4, '(1) the error log: 4 of x released while it is paused');
ok(scalar(grep { /\[error\].*scope "x" while it is paused/ } stop_lines()), '(1) ... at level error');
is(released_logged('y', 0), 2, '(1) the error log: the 2 of y that waited for their pace');
ok(scalar(grep { /scope "y" ahead of its paced release/ } stop_lines()), '(1) ... named as such');
my @acc = file_lines('access.log');
is(scalar(grep { m{^/(?:paced/)?(?:quit|paced)\d+ released 200$} } @acc), 7,
   '(1) all 7 logged as released');

# (2) the pause stays: the next start is paused again
like(read_file_text($state) // '', qr/^paused x /m, '(2) the state file still has x paused');
start_nginx(conf());
my $s = scope_status('x');
ok($s && $s->{paused}, '(2) x is paused after the restart');
ok(!scope_status('y')->{paused}, '(2) y is not');
my @again = hold('again', 1);
ok(wait_held('x', 1), '(2) a request is held');
is(scalar ctl('POST', 'resume', 'scope=x'), 200, '(2) resumed');
answered_200('(2) after the resume', 5, time, @again);

# (3) a reload keeps holding
is(scalar ctl('POST', 'pause', 'scope=x'), 200, '(3) x paused');
my $lines = stop_lines();
my @r = hold('reload', 3);
ok(wait_held('x', 3), '(3) 3 held');
my ($oldw) = reload_nginx();
ok(none_readable(1, @r), '(3) still held 1 s after the reload');
ok(scalar(grep { pid_alive($_) } @$oldw), '(3) an old worker is alive, holding them');
is(scalar stop_lines(), $lines, '(3) no release logged');
is(at_backend('reload'), 0, '(3) the backend got none');
is(scalar ctl('POST', 'resume', 'scope=x'), 200, '(3) resumed');
answered_200('(3) after the resume', 5, time, @r);
ok(wait_for(sub { !grep { pid_alive($_) } @$oldw }, 10), '(3) the old workers exit');

# (4) a reload, then a real stop before the resume
is(scalar ctl('POST', 'pause', 'scope=x'), 200, '(4) x paused');
@r = hold('reloadquit', 2);
ok(wait_held('x', 2), '(4) 2 held');
($oldw) = reload_nginx();
ok(none_readable(0.5, @r), '(4) still held after the reload');
$master = nginx_pid();
$t0 = time;
ok(kill('QUIT', $master), '(4) QUIT to the master');
$took = answered_200('(4) the requests the old workers held', 5, $t0, @r);
ok(defined $took && $took < 1, '(4) ... within 1 s of the QUIT');
ok(wait_pid_exit($master, 5), '(4) nginx exits');
stop_nginx();
is(released_logged('x', $lines), 2, '(4) the old workers logged their release');

# (5) a reload to a configuration without the module is a real stop for the old workers
start_nginx(conf());
ok(scope_status('x')->{paused}, '(5) x is paused (state file)');
$lines = stop_lines();
@r = hold('nomodule', 2);
ok(wait_held('x', 2), '(5) 2 held');
$t0 = time;
reload_nginx(conf(no_module => 1), no_module => 1);
answered_200('(5) after the reload', 5, $t0, @r);
is(released_logged('x', $lines), 2, '(5) the release is logged');
stop_nginx();

# (6) the old generation of a binary upgrade keeps holding on its QUIT
start_nginx(conf(), upgradable => 1);
ok(scope_status('x')->{paused}, '(6) x is paused (state file)');
$lines = stop_lines();
@r = hold('upgrade', 3);
ok(wait_held('x', 3), '(6) 3 held by the old generation');
my $u = upgrade_nginx();
ok(kill('QUIT', $u->{old_master}), '(6) QUIT to the old master');
ok(none_readable(1, @r), '(6) still held 1 s after');
ok(scalar(grep { pid_alive($_) } @{ $u->{old_workers} }), '(6) the old workers are alive');
is(scalar stop_lines(), $lines, '(6) no release logged');
is(at_backend('upgrade'), 0, '(6) the backend got none');
ok(scalar(error_log_lines(qr/shutting down for a binary upgrade: it keeps holding \d+ request/)),
   '(6) the old workers say they keep holding');
my ($st, $h) = ctl('POST', 'resume', 'scope=x');
is($st, 200, '(6) resumed by the new generation');
answered_200('(6) after the resume', 10, time, @r);
ok(wait_pid_exit($u->{old_master}, 10), '(6) the old master exits');

finish();
