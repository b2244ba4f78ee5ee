package Intermission::Test;

# Integration-test harness for ngx_http_intermission_module, in the spirit of
# Test::Nginx / nginx-tests, on core Perl only.
#
# Environment:
#   INTERMISSION_MODULE   path of the module .so (default: <repo>/target/module/
#                         ngx_http_intermission_module.so); "none" = no load_module line
#   TEST_NGINX_BINARY     nginx binary (default /usr/sbin/nginx)
#   TEST_NGINX_LOG_LEVEL  error_log level (default notice; e.g. debug)
#   TEST_KEEP_SERVROOT    keep the per-file prefix directory t/servroot-<name>-<pid>
#   TEST_FILE_TIMEOUT     seconds before a test file is aborted (default 300)
#   INTERMISSIONCTL       the intermissionctl that intermissionctl() runs (default
#                         <repo>/scripts/intermissionctl)
#   TEST_NGINX_SLOW       a factor (default 1) for the harness's waits, for a slow nginx (e.g.
#                         under valgrind, scripts/memcheck): the default answer timeout, the
#                         timeouts given to wait_for / wait_held / wait_inflight,
#                         read_response(s), closed, ctl, bg_wait, nginx start/stop/reload and
#                         TEST_FILE_TIMEOUT are multiplied by it; readable and none_readable
#                         (which tests use to show that nothing arrives) are not. slow() returns it.
#
# A test writes only the http {} block (plus an optional worker_processes line),
# with placeholders %%PREFIX%%, %%PORT%%, %%CTL_PORT%%, %%BACKEND_PORT%%, and any
# %%<NAME>_PORT%% (a free port is allocated per name and kept for the whole file;
# %%<something>BACKEND<something>_PORT%% starts a backend of that name on demand;
# %%CONTROL_SERVER%% is a server on %%CTL_PORT%% with `location /ctl/ { intermission_control; }`).
#
# A binary upgrade (USR2) needs start_nginx($template, upgradable => 1) (nginx as a daemon,
# adopted by the test as a child subreaper) and upgrade_nginx(); see "binary upgrade" below.
#
# More nginx instances (a fleet) run next to the main one with start_instance($name,
# $template): each has its own prefix (<prefix>/<name>), its own %%PORT%%, %%CTL_PORT%% and
# other %%..._PORT%%, and shares the file's backends (%%BACKEND_PORT%%); see
# "more nginx instances" below.

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::MD5 qw(md5_hex);
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use Exporter qw(import);
use Fcntl qw(:flock O_WRONLY O_CREAT O_EXCL);
use File::Basename qw(basename dirname);
use File::Path qw(make_path remove_tree);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use POSIX qw(WNOHANG);
use Scalar::Util qw(weaken blessed);
use Socket qw(IPPROTO_TCP TCP_NODELAY SOL_SOCKET SO_LINGER);
use Test::More ();
use Time::HiRes qw(time sleep);
use feature 'state';

our @EXPORT = qw(
    prefix port free_port set_var write_file read_file_text
    make_conf nginx_t check_directives start_nginx stop_nginx reload_nginx nginx_pid worker_pids
    start_instance stop_instance instance instances repo_root
    start_backend stop_backend kill_backend backend_log backend_port
    http_connect http_request http_get http_post build_request read_responses none_readable
    ctl ctl_prefix ctl_status scope_status total_held wait_held
    wait_for error_log_alerts error_log_tail finish pump_all
    allow_alerts error_log_lines file_lines
    ctl_send ctl_recv wait_inflight
    bg_start bg_wait bg_kill bg_output bg_stderr run_cmd
    intermissionctl intermissionctl_bg gated_command gate_started gate_open
    parse_prometheus rfc3339_epoch
    slow upgrade_nginx master_worker_pids pid_alive wait_pid_exit
    fds_of fdinfo eventfd_id eventfd_count module_eventfd watches_eventfd nginx_children
);
push @EXPORT, qw(ws_open send_only json_ok not_paused scope_counters wait_down connect_failures);
push @EXPORT, qw(most_at_once lis pinned_connections);

my $ROOT = abs_path(dirname(__FILE__) . '/../../..');
our $MODULE = $ENV{INTERMISSION_MODULE} // "$ROOT/target/module/ngx_http_intermission_module.so";
our $NGINX  = $ENV{TEST_NGINX_BINARY} // '/usr/sbin/nginx';
our $SLOW = (($ENV{TEST_NGINX_SLOW} // '') =~ /^\d+(?:\.\d+)?$/ && $ENV{TEST_NGINX_SLOW} > 0)
    ? $ENV{TEST_NGINX_SLOW} + 0 : 1;
our $TIMEOUT = 5 * $SLOW;               # default wait for an answer, seconds

# slow() -> TEST_NGINX_SLOW's factor (1 by default)
sub slow { $SLOW }

# a timeout given by a test, scaled by TEST_NGINX_SLOW; the default answer timeout if undef
sub _t { defined $_[0] ? $_[0] * $SLOW : $TIMEOUT }

my $MAIN_PID = $$;
my $PREFIX;
my %PORTS;          # placeholder name => port
my %USED_PORTS;
my %VARS;           # extra %%NAME%% placeholders
my %BACKENDS;       # name => { pid, port, log }
my %LIVE;           # connection id => weak ref (for pump_all)
my $CONN_ID = 0;
my $CTL_PREFIX = '/ctl/';
my $FINISHED;
my %NGX = (pid => undef, workers => 1, listen => [], conf => undef);
my %INSTANCES;      # name => Intermission::Test::Instance (see start_instance)

# repo_root() -> the repository's top directory (e.g. for scripts/...)
sub repo_root { $ROOT }

$SIG{PIPE} = 'IGNORE';
$SIG{ALRM} = sub { Test::More::diag("test file timed out"); exit 255 };
$SIG{INT}  = sub { exit 130 };
$SIG{TERM} = sub { exit 143 };
alarm(($ENV{TEST_FILE_TIMEOUT} // 300) * $SLOW);

# ---------------------------------------------------------------- prefix, ports

sub prefix {
    return $PREFIX if defined $PREFIX;
    my $name = basename($0);
    $name =~ s/\.t$//;
    $name =~ s/[^\w.-]/_/g;
    $PREFIX = "$ROOT/t/servroot-$name-$$";
    remove_tree($PREFIX) if -e $PREFIX;
    make_path("$PREFIX/html");
    chmod 0755, $PREFIX;
    return $PREFIX;
}

sub free_port {
    for (1 .. 50) {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                      Proto => 'tcp', Listen => 1, ReuseAddr => 1)
            or die "free_port: $!";
        my $p = $s->sockport;
        close $s;
        next if $USED_PORTS{$p}++;
        return $p;
    }
    die "free_port: no free port";
}

# port('PORT'), port('CTL_PORT'), port('BACKEND_PORT'), ...: allocated on first use.
sub port {
    my ($name) = @_;
    $name //= 'PORT';
    $name .= '_PORT' unless $name =~ /PORT$/;
    return $PORTS{$name} //= free_port();
}

sub set_var { my ($k, $v) = @_; $VARS{$k} = $v }

sub write_file {
    my ($name, $content) = @_;
    my $path = $name =~ m{^/} ? $name : prefix() . "/$name";
    make_path(dirname($path));
    open my $fh, '>', $path or die "write $path: $!";
    binmode $fh;
    print $fh $content;
    close $fh or die "close $path: $!";
    return $path;
}

sub read_file_text {
    my ($name) = @_;
    my $path = $name =~ m{^/} ? $name : prefix() . "/$name";
    open my $fh, '<', $path or return undef;
    binmode $fh;
    local $/;
    my $d = <$fh>;
    return $d // '';
}

# ---------------------------------------------------------------- config

# The control endpoint most tests use: a server of its own, location /ctl/.
my $CONTROL_SERVER = <<'CONF';
server {
        listen 127.0.0.1:%%CTL_PORT%%;
        location /ctl/ {
            intermission_control;
        }
    }
CONF

# $inst: an instance (start_instance): its prefix, its own ports and vars; backends are
# the file's.
sub _expand {
    my ($tpl, $inst) = @_;
    my $p = $inst ? $inst->{prefix} : prefix();
    $tpl =~ s/%%CONTROL_SERVER%%/$CONTROL_SERVER/g;
    $tpl =~ s/%%PREFIX%%/$p/g;
    $tpl =~ s{%%(\w+)%%}{
        my $n = $1;
        if ($inst && exists $inst->{vars}{$n}) { $inst->{vars}{$n} }
        elsif (exists $VARS{$n}) { $VARS{$n} }
        elsif ($n =~ /^(\w*BACKEND\w*)_PORT$/) {
            my $b = $1;
            $PORTS{$n} // do { start_backend(name => $b); $PORTS{$n} }
        }
        elsif ($n =~ /PORT$/) { $inst ? ($inst->{ports}{$n} //= free_port()) : port($n) }
        else { die "unknown placeholder %%$n%%" }
    }ge;
    return $tpl;
}

# make_conf($template, %opt) -> full nginx.conf text.
# opt: error_log => path, log_level => 'notice'|'debug'|..., no_module => 1, daemon => 1,
#      instance => $inst (placeholders and paths of that instance, see start_instance)
sub make_conf {
    my ($tpl, %o) = @_;
    my $p = $o{instance} ? $o{instance}{prefix} : prefix();
    my $body = _expand($tpl, $o{instance});
    my $level = $o{log_level} // $ENV{TEST_NGINX_LOG_LEVEL} // 'notice';
    my $elog = $o{error_log} // "$p/error.log";
    my @main;
    push @main, "load_module $MODULE;" unless $MODULE eq 'none' || $o{no_module};
    push @main, "user root;" if $> == 0 && $body !~ /^\s*user\s/m;
    push @main, ($o{daemon} ? "daemon on;" : "daemon off;"), "master_process on;";
    push @main, "worker_processes 1;" unless $body =~ /^\s*worker_processes\s/m;
    push @main, "pid $p/nginx.pid;", "lock_file $p/nginx.lock;";
    push @main, "error_log $elog $level;";
    push @main, "events { worker_connections 1024; }" unless $body =~ /^\s*events\s*\{/m;

    my @http;
    push @http, "access_log $p/access.log;" unless $body =~ /\baccess_log\b/;
    for my $t (qw(client_body proxy fastcgi uwsgi scgi)) {
        push @http, "${t}_temp_path $p/${t}_temp;" unless $body =~ /\b${t}_temp_path\b/;
    }
    my $inj = join('', map { "    $_\n" } @http);
    $body =~ s/^(\s*http\s*\{[^\n]*\n)/$1$inj/m
        or $body =~ s/\bhttp\s*\{/http {\n$inj/;
    return join("\n", @main) . "\n\n" . $body . "\n";
}

my $T_SEQ = 0;

# nginx_t($template, %opt) -> (exit status, output)
sub nginx_t {
    my ($tpl, %o) = @_;
    my $p = prefix();
    $T_SEQ++;
    my $conf = write_file("nginx-t-$T_SEQ.conf",
                          make_conf($tpl, %o, error_log => "$p/nginx-t-error.log"));
    my $pid = open(my $fh, '-|');
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        alarm 0;
        open STDERR, '>&', \*STDOUT;
        { no warnings q(exec); exec $NGINX, '-t', '-p', "$p/", '-c', $conf, '-e', "$p/nginx-t-error.log"; }
        POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

# check_directives(\&conf, bad => [[$name, $directive, %conf_opts], ...],
#                          good => [[$name, %conf_opts], ...])
# Each bad case must fail `nginx -t` with a message that names $directive (and not as an
# unknown directive: the module's directives must be known); each good case must pass.
# conf(%conf_opts) builds the test file's configuration template.
sub check_directives {
    my ($conf, %cases) = @_;
    for my $t (@{ $cases{bad} // [] }) {
        my ($name, $directive, %o) = @$t;
        my ($rc, $out) = nginx_t($conf->(%o));
        Test::More::isnt($rc, 0, "$name: nginx -t fails");
        Test::More::like($out, qr/"\Q$directive\E"/, "$name: message names \"$directive\"")
            or Test::More::diag($out);
        Test::More::unlike($out, qr/unknown directive/, "$name: the directive is known")
            or Test::More::diag($out);
    }
    for my $t (@{ $cases{good} // [] }) {
        my ($name, %o) = @$t;
        my ($rc, $out) = nginx_t($conf->(%o));
        Test::More::is($rc, 0, "$name: nginx -t passes") or Test::More::diag($out);
    }
}

# ---------------------------------------------------------------- nginx lifecycle

sub _pdeathsig {
    # ask the kernel to send SIGTERM to this (child) process if the test script dies
    eval { require 'syscall.ph'; syscall(&SYS_prctl(), 1, 15) };   ## no critic
}

sub _children_of {
    my ($ppid) = @_;
    my @r;
    opendir my $d, '/proc' or return ();
    for my $pid (grep { /^\d+$/ } readdir $d) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $st = <$fh> // next;
        close $fh;
        my $rest = substr($st, rindex($st, ')') + 2);
        my (undef, $pp) = split / /, $rest;
        next unless defined $pp && $pp == $ppid;
        my $cmd = '';
        if (open my $c, '<', "/proc/$pid/cmdline") { local $/; $cmd = <$c> // ''; close $c }
        $cmd =~ s/\0.*//s;
        push @r, [$pid, $cmd];
    }
    closedir $d;
    return @r;
}

sub nginx_pid { $NGX{pid} }

# nginx_children($re) -> the pids of the master's children whose title matches $re (e.g.
# qr/cache manager/), in order
sub nginx_children {
    my ($re) = @_;
    return () unless $NGX{pid};
    my @p = sort { $a <=> $b } map { $_->[0] } grep { $_->[1] =~ $re } _children_of($NGX{pid});
    return @p;    # a count in scalar context
}

# worker_pids()             -> current (not shutting down) worker pids
# worker_pids(all => 1)     -> every worker, including old ones shutting down
sub worker_pids {
    my (%o) = @_;
    return _worker_pids_of(\%NGX, %o);
}

sub _worker_pids_of {
    my ($st, %o) = @_;
    return () unless $st->{pid};
    # Under valgrind (scripts/memcheck) a process's title stays valgrind's command line:
    # every child of the master counts as a worker, shutting down or not.
    my @w = sort { $a <=> $b }
        map { $_->[0] }
        grep { ($_->[1] =~ /worker process/ && ($o{all} || $_->[1] !~ /shutting down/))
               || $_->[1] =~ m{valgrind} }
        _children_of($st->{pid});
    return @w;    # count in scalar context
}

sub _can_connect {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

sub _conf_workers {
    my ($conf) = @_;
    my ($n) = $conf =~ /^\s*worker_processes\s+(\w+)\s*;/m;
    $n //= 1;
    if ($n eq 'auto') {
        $n = () = do { open my $f, '<', '/proc/cpuinfo'; grep { /^processor\s*:/ } <$f> };
        $n ||= 1;
    }
    return $n;
}

sub _conf_listen_ports {
    my ($conf) = @_;
    my %p;
    $p{$1} = 1 while $conf =~ /^\s*listen\s+(?:[\d.]+:|\[[^\]]*\]:)?(\d+)\b/mg;
    return sort { $a <=> $b } keys %p;
}

# `listen unix:PATH` sockets of a configuration
sub _conf_listen_unix {
    my ($conf) = @_;
    my %p;
    $p{$1} = 1 while $conf =~ /^\s*listen\s+unix:([^\s;]+)/mg;
    return sort keys %p;
}

sub _can_connect_unix {
    my ($path) = @_;
    return 0 unless -S $path;
    require IO::Socket::UNIX;
    my $s = IO::Socket::UNIX->new(Peer => $path, Type => Socket::SOCK_STREAM()) or return 0;
    close $s;
    return 1;
}

# every TCP port and unix socket of the state's configuration accepts
sub _listening {
    my ($st) = @_;
    return 0 if grep { !_can_connect($_) } @{ $st->{listen} };
    return 0 if grep { !_can_connect_unix($_) } @{ $st->{listen_unix} || [] };
    return 1;
}

sub _nginx_diag {
    my ($dir) = @_;
    my $s = '';
    for my $f ('nginx.stderr', 'error.log') {
        my $t = read_file_text(defined $dir ? "$dir/$f" : $f);
        next unless defined $t && length $t;
        my @l = split /\n/, $t;
        @l = @l[-30 .. -1] if @l > 30;
        $s .= "--- $f:\n" . join("\n", @l) . "\n";
    }
    return $s;
}

# start_nginx($template, %opt): writes <prefix>/nginx.conf, starts nginx (daemon off,
# child of the test), waits until every listen port accepts and all workers run.
sub start_nginx {
    my ($tpl, %o) = @_;
    return _start_nginx_state(\%NGX, 'start_nginx', $tpl, %o);
}

# starts nginx for a state: \%NGX (the main nginx) or an instance
sub _start_nginx_state {
    my ($NGXS, $what, $tpl, %o) = @_;
    die "$what: nginx already running (pid $NGXS->{pid})" if $NGXS->{pid};
    if ($MODULE ne 'none' && !$o{no_module} && !-f $MODULE) {
        die "$what: module $MODULE not found (build it or set INTERMISSION_MODULE)\n";
    }
    my $inst = $NGXS == \%NGX ? undef : $NGXS;
    my $p = $inst ? $inst->{prefix} : prefix();
    $NGXS->{daemon} = $o{upgradable} ? 1 : 0;
    $NGXS->{upgradable} = $NGXS->{daemon};
    my $conf = make_conf($tpl, %o, daemon => $NGXS->{daemon}, ($inst ? (instance => $inst) : ()));
    write_file("$p/nginx.conf", $conf);
    $NGXS->{conf} = $conf;
    $NGXS->{workers} = _conf_workers($conf);
    $NGXS->{listen} = [_conf_listen_ports($conf)];
    $NGXS->{listen_unix} = [_conf_listen_unix($conf)];
    unlink grep { -S $_ } @{ $NGXS->{listen_unix} };

    my @cmd = ($NGINX, '-p', "$p/", '-c', "$p/nginx.conf", '-e', "$p/error.log");
    my $pid;
    if ($o{upgradable}) {
        $pid = _start_daemon($NGXS, $what, $p, @cmd);
    } else {
        $pid = fork;
        die "fork: $!" unless defined $pid;
        if (!$pid) {
            alarm 0;
            _pdeathsig();
            open STDIN, '<', '/dev/null';
            open STDOUT, '>>', "$p/nginx.stderr";
            open STDERR, '>&', \*STDOUT;
            { no warnings q(exec); exec @cmd; }
            POSIX::_exit(127);
        }
    }
    $NGXS->{pid} = $pid;
    my $deadline = time + ($o{timeout} // 10) * $SLOW;
    while (1) {
        if (waitpid($pid, WNOHANG) == $pid || !pid_alive($pid)) {
            my $st = $?;
            $NGXS->{pid} = undef;
            die "$what: nginx exited during startup (status $st)\n" . _nginx_diag($p);
        }
        my $ready = _listening($NGXS);
        $ready &&= (_worker_pids_of($NGXS) >= $NGXS->{workers});
        last if $ready;
        if (time > $deadline) {
            my $d = _nginx_diag($p);
            _stop_nginx_state($NGXS);
            die "$what: nginx not ready in time\n$d";
        }
        sleep 0.02;
    }
    return $pid;
}

sub _wait_exit {
    my ($pid, $secs) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        return 1 if $r == $pid;
        # not (or no longer) the test's child: an upgraded master whose parent, the old
        # master, still runs
        return 1 if $r == -1 && !pid_alive($pid);
        sleep 0.02;
    }
    return 0;
}

# pid_alive($pid) -> true if the process exists and is not a zombie
sub pid_alive {
    my ($pid) = @_;
    return 0 unless $pid && kill(0, $pid);
    open my $fh, '<', "/proc/$pid/stat" or return 0;
    my $st = <$fh> // return 0;
    close $fh;
    my ($state) = substr($st, rindex($st, ')') + 2) =~ /^(\S)/;
    return defined $state && $state ne 'Z' && $state ne 'X';
}

# wait_pid_exit($pid, $timeout = 5) -> true once the process is gone (reaped if it is the
# test's child, or a zombie / gone otherwise)
sub wait_pid_exit {
    my ($pid, $timeout) = @_;
    return _wait_exit($pid, _t($timeout));
}

# stop_nginx(%opt): QUIT, then TERM, then KILL (master and any leftover worker).
sub stop_nginx {
    my (%o) = @_;
    return _stop_nginx_state(\%NGX, %o);
}

sub _stop_nginx_state {
    my ($NGXS, %o) = @_;
    # the masters an upgrade left behind (upgrade_nginx) go first: while an old master
    # runs, the new one is its child, and it would take over again if the new one left
    for my $old (reverse @{ delete $NGXS->{old_masters} || [] }) {
        _stop_master($old, %o) if pid_alive($old);
    }
    my $pid = $NGXS->{pid} or return;
    _stop_master($pid, %o);
    $NGXS->{pid} = undef;
}

sub _stop_master {
    my ($pid, %o) = @_;
    my @kids = map { $_->[0] } _children_of($pid);
    kill 'QUIT', $pid;
    if (!_wait_exit($pid, ($o{quit_timeout} // 5) * $SLOW)) {
        Test::More::diag("nginx did not exit on QUIT, sending TERM");
        push @kids, map { $_->[0] } _children_of($pid);
        kill 'TERM', $pid;
        if (!_wait_exit($pid, 5 * $SLOW)) {
            Test::More::diag("nginx did not exit on TERM, sending KILL");
            kill 'KILL', $pid;
            _wait_exit($pid, 2);
        }
    }
    for my $k (@kids) {
        next unless kill 0, $k;
        if (open my $c, '<', "/proc/$k/cmdline") {
            local $/;
            my $cmd = <$c> // '';
            # Not the new master of a binary upgrade, the old master's child: it is stopped
            # on its own, by QUIT (killed, it would leave its workers running).
            next if $cmd =~ /^nginx: master process/;
            kill 'KILL', $k if $cmd =~ /^nginx|valgrind|memcheck/;
        }
    }
}

# reload_nginx([$template], %opt) -> (\@old_worker_pids, \@new_worker_pids)
# Sends SIGHUP to the master (rewriting nginx.conf first if a template is given) and
# waits until a full set of new workers runs and the old ones no longer accept.
sub reload_nginx {
    my ($tpl, %o) = @_;
    my $pid = $NGX{pid} or die "reload_nginx: nginx not running";
    if (defined $tpl) {
        my $conf = make_conf($tpl, daemon => $NGX{daemon}, %o);
        write_file('nginx.conf', $conf);
        $NGX{conf} = $conf;
        $NGX{workers} = _conf_workers($conf);
        $NGX{listen} = [_conf_listen_ports($conf)];
    }
    my @old = worker_pids(all => 1);
    my %old = map { $_ => 1 } @old;
    kill 'HUP', $pid or die "reload_nginx: kill HUP: $!";
    my @new;
    my $deadline = time + ($o{timeout} // 10) * $SLOW;
    while (1) {
        die "reload_nginx: master exited\n" . _nginx_diag() if waitpid($pid, WNOHANG) == $pid;
        @new = grep { !$old{$_} } worker_pids();
        last if @new >= $NGX{workers} && !grep { !_can_connect($_) } @{ $NGX{listen} };
        die "reload_nginx: new workers did not start\n" . _nginx_diag() if time > $deadline;
        sleep 0.02;
    }
    # The master tells the old workers to stop ~100 ms after the new ones start; until then
    # they still accept, and answer from the old configuration: wait until they are shutting
    # down (or gone).
    my %new = map { $_ => 1 } @new;
    wait_for(sub { !grep { !$new{$_} } worker_pids() }, 5)
        or Test::More::diag("reload_nginx: old workers still accept");
    return (\@old, \@new);
}

# ---------------------------------------------------------------- binary upgrade

# An nginx master ignores SIGUSR2 (binary upgrade) while its parent is the process that
# started it ("ngx_getppid() == ngx_parent": it takes itself for the new binary of a running
# upgrade), and SIGWINCH (stop the workers, keep the master) unless it runs as a daemon. So
# start_nginx($tpl, upgradable => 1) runs nginx as in production: `daemon on`, the launched
# process forks the master and exits. The test process is made a child subreaper
# (PR_SET_CHILD_SUBREAPER), so the daemon master (and, once the old master of an upgrade
# exits, the new master) becomes the test's child; the harness takes its pid from nginx.pid
# and stops it with stop_nginx() / finish() as usual. Such a master gets no "parent died"
# signal: if the test is killed with SIGKILL, it stays (nginx.pid in the prefix names it).
sub _subreaper {
    state $done;
    return if $done;
    require 'syscall.ph';    ## no critic
    syscall(&SYS_prctl(), 36, 1, 0, 0, 0) == 0    # PR_SET_CHILD_SUBREAPER
        or die "prctl(PR_SET_CHILD_SUBREAPER): $!\n";
    $done = 1;
}

# -> the daemon master's pid
sub _start_daemon {
    my ($NGXS, $what, $p, @cmd) = @_;
    _subreaper();
    unlink "$p/nginx.pid";
    my $launcher = fork;
    die "fork: $!" unless defined $launcher;
    if (!$launcher) {
        alarm 0;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$p/nginx.stderr";
        open STDERR, '>&', \*STDOUT;
        { no warnings q(exec); exec @cmd; }
        POSIX::_exit(127);
    }
    my $deadline = time + 10 * $SLOW;
    my $st;
    while (1) {
        if (!defined $st && waitpid($launcher, WNOHANG) == $launcher) {
            $st = $?;
            die "$what: nginx exited during startup (status $st)\n" . _nginx_diag($p) if $st;
        }
        if (defined $st) {
            my $pid = _read_pid_file("$p/nginx.pid");
            return $pid if $pid && pid_alive($pid);
        }
        if (time > $deadline) {
            kill 'KILL', $launcher unless defined $st;
            die "$what: no nginx master (daemon) in time\n" . _nginx_diag($p);
        }
        sleep 0.02;
    }
}

# master_worker_pids($master_pid, %opt) -> that master's workers (like worker_pids: not
# shutting down, or every one with all => 1); for the masters of an upgrade
sub master_worker_pids {
    my ($master, %o) = @_;
    return _worker_pids_of({ pid => $master }, %o);
}

sub _read_pid_file {
    my ($path) = @_;
    my $t = read_file_text($path) // return undef;
    my ($n) = $t =~ /^(\d+)/;
    return $n;
}

# upgrade_nginx([$template], %opt) -> { old_master, new_master, old_workers => [...],
#                                        new_workers => [...] }
# A binary upgrade of the main nginx (started with upgradable => 1): rewrites nginx.conf
# if a template is given (the new binary reads it; the old master keeps its own), then
# sends SIGUSR2 to the master, which renames nginx.pid to nginx.pid.oldbin and executes the
# binary again (the same path: TEST_NGINX_BINARY); the new master inherits the listening
# sockets and starts its workers, and both generations then accept on those sockets.
# Waits until the new master runs with a full set of workers, nginx.pid names it,
# nginx.pid.oldbin names the old one and every listen port accepts. From then on nginx_pid(), worker_pids()
# and reload_nginx() are the new master's; the old master (a child of nothing the test
# owns until it exits) keeps its workers until the test sends it WINCH / QUIT. stop_nginx()
# and finish() stop the old master first (QUIT, TERM, KILL), then the new one.
# opt: timeout (default 10 s).
sub upgrade_nginx {
    my ($tpl, %o) = @_;
    my $old = $NGX{pid} or die "upgrade_nginx: nginx not running\n";
    die "upgrade_nginx: start nginx with upgradable => 1 (a master whose parent started it "
      . "ignores SIGUSR2)\n" unless $NGX{upgradable};
    my $p = prefix();
    if (defined $tpl) {
        my $conf = make_conf($tpl, daemon => 1, %o);
        write_file('nginx.conf', $conf);
        $NGX{conf} = $conf;
        $NGX{workers} = _conf_workers($conf);
        $NGX{listen} = [_conf_listen_ports($conf)];
        $NGX{listen_unix} = [_conf_listen_unix($conf)];
    }
    my @oldw = worker_pids(all => 1);
    kill 'USR2', $old or die "upgrade_nginx: kill USR2: $!";
    my $deadline = time + ($o{timeout} // 10) * $SLOW;
    my ($new, $seen, @neww);
    while (1) {
        die "upgrade_nginx: old master exited\n" . _nginx_diag() unless pid_alive($old);
        # the new master: the old master's child that nginx.pid names (under valgrind every
        # process's title is valgrind's command line, so the title cannot tell)
        my $pidf = _read_pid_file("$p/nginx.pid");
        my $oldf = _read_pid_file("$p/nginx.pid.oldbin");
        my %kids = map { $_->[0] => 1 } _children_of($old);
        $new = ($pidf && $pidf != $old && $kids{$pidf}) ? $pidf : undef;
        die "upgrade_nginx: the new binary exited\n" . _nginx_diag()
            if $seen && !pid_alive($seen);
        $seen //= $new;
        if ($new) {
            @neww = master_worker_pids($new);
            last if @neww >= $NGX{workers} && ($oldf // 0) == $old && _listening(\%NGX);
        }
        die "upgrade_nginx: new master not ready in time (new master: " . ($new // 'none')
          . ", its workers: @neww)\n" . _nginx_diag() if time > $deadline;
        sleep 0.02;
    }
    push @{ $NGX{old_masters} }, $old;
    $NGX{pid} = $new;
    return { old_master => $old, new_master => $new, old_workers => \@oldw,
             new_workers => [@neww] };
}

# ---------------------------------------------------------------- more nginx instances

# start_instance($name, $template, %opt) -> Intermission::Test::Instance: one more nginx
# (e.g. a fleet: one instance per member), started like start_nginx (same options) in its
# own prefix <prefix>/<name>. In its template %%PREFIX%% is that prefix; %%PORT%%,
# %%CTL_PORT%%, %%CONTROL_SERVER%% and every other %%..._PORT%% get ports of the instance's
# own (ports in opt: { CTL_PORT => 1234 } fixes some); %%..BACKEND.._PORT%% are the file's
# shared backends, so one backend_log() records what every instance forwards.
# opt (besides start_nginx's): files => { 'htpasswd' => "..." } written into its prefix
# first; vars => { NAME => value } placeholders of its own; ports => { NAME_PORT => n }.
# The instance keeps its ports across stop/start. finish() stops every instance and checks
# its error log too.
sub start_instance {
    my ($name, $tpl, %o) = @_;
    die "start_instance: bad name '$name'\n" unless $name =~ /^[\w.-]+$/;
    my $inst = $INSTANCES{$name};
    if (!$inst) {
        my $dir = prefix() . "/$name";
        make_path("$dir/html");
        $inst = bless { name => $name, prefix => $dir, ports => {}, vars => {}, pid => undef,
                        workers => 1, listen => [], listen_unix => [], conf => undef },
                      'Intermission::Test::Instance';
        $INSTANCES{$name} = $inst;
    }
    for my $k (keys %{ $o{ports} || {} }) {
        my $n = $k =~ /PORT$/ ? $k : "${k}_PORT";
        $inst->{ports}{$n} = $o{ports}{$k};
        $USED_PORTS{ $o{ports}{$k} } = 1;
    }
    $inst->{vars}{$_} = $o{vars}{$_} for keys %{ $o{vars} || {} };
    write_file("$inst->{prefix}/$_", $o{files}{$_}) for keys %{ $o{files} || {} };
    my %so = %o;
    delete @so{qw(ports vars files)};
    $inst->{template} = $tpl;
    _start_nginx_state($inst, "start_instance($name)", $tpl, %so);
    return $inst;
}

# stop_instance($inst or $name, %opt): like stop_nginx (QUIT, TERM, KILL)
sub stop_instance {
    my ($i, %o) = @_;
    my $inst = ref $i ? $i : $INSTANCES{$i} or die "stop_instance: no instance '$i'\n";
    $inst->stop(%o);
}

# instance($name) -> the instance object (or undef); instances() -> all, by name
sub instance { $INSTANCES{ $_[0] } }
sub instances { map { $INSTANCES{$_} } sort keys %INSTANCES }

# ---------------------------------------------------------------- error log

my $BAD_RE = qr/\[(?:alert|emerg|crit)\]|exited on signal|segfault/;

my @ALLOWED_ALERTS;    # patterns of expected alert lines, see allow_alerts

# allow_alerts(qr/.../, ...): error-log lines matching one of these patterns are not
# reported by error_log_alerts() and finish() (e.g. the master's "exited on signal 9"
# line after a test kills a worker on purpose). Count such lines with error_log_lines().
sub allow_alerts { push @ALLOWED_ALERTS, @_ }

# error_log_alerts() -> the bad lines of the main nginx's logs and of every instance's
# (those named "<instance>/error.log: ...")
sub error_log_alerts {
    my @bad;
    my @files = ('error.log', 'nginx.stderr');
    for my $i (sort keys %INSTANCES) {
        push @files, map { "$i/$_" } 'error.log', 'nginx.stderr';
    }
    for my $f (@files) {
        my $t = read_file_text($f) // next;
        for my $l (split /\n/, $t) {
            next unless $l =~ $BAD_RE;
            next if grep { $l =~ $_ } @ALLOWED_ALERTS;
            push @bad, "$f: $l";
        }
    }
    return @bad;
}

# error_log_lines([qr/.../]) -> the lines of error.log that match (every line without one)
sub error_log_lines {
    my ($re) = @_;
    my $t = read_file_text('error.log') // return ();
    return grep { !defined $re || $_ =~ $re } split /\n/, $t;
}

# file_lines($name) -> the lines of a file in the prefix (e.g. an access log); () if missing
sub file_lines {
    my ($name) = @_;
    my $t = read_file_text($name) // return ();
    return split /\n/, $t;
}

sub error_log_tail {
    my ($n) = @_;
    my $t = read_file_text('error.log') // return '';
    my @l = split /\n/, $t;
    $n //= 30;
    @l = @l[-$n .. -1] if @l > $n;
    return join("\n", @l);
}

# ---------------------------------------------------------------- backend

sub backend_port { my ($name) = @_; $name //= 'BACKEND'; $BACKENDS{$name} && $BACKENDS{$name}{port} }

# start_backend(name => 'BACKEND') -> port. Sets placeholder %%<name>_PORT%%.
# opt: port => N (listen there, e.g. to start a stopped backend again on its old port),
#      keep_log => 1 (append to the backend's log instead of starting a new one),
#      proto => 'fastcgi' | 'uwsgi' (a responder of that protocol instead of HTTP: one
#      request per connection, logged as an HTTP one is, answering "ok <REQUEST_URI>", or
#      the ?status= the URI asks for, ?once= as for HTTP)
sub start_backend {
    my (%o) = @_;
    my $name = $o{name} // 'BACKEND';
    die "backend $name already running" if $BACKENDS{$name};
    my $p = prefix();
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $o{port} // 0,
                                    Proto => 'tcp', Listen => 1024, ReuseAddr => 1)
        or die "start_backend: $!";
    my $port = $srv->sockport;
    $USED_PORTS{$port} = 1;
    my $log = "$p/backend-$name.log";
    write_file($log, '') unless $o{keep_log} && -e $log;
    my $parent = $$;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        # Not the test's client sockets: a client that closes must reach nginx as a close.
        # Each is replaced with /dev/null rather than closed: Perl's handles of the test
        # still count their descriptors, and a connection accepted into a number that one
        # of them counts would not be closed by its own close (no FIN for nginx).
        my $keep = fileno($srv);
        open my $null, '<', '/dev/null' or die "/dev/null: $!";
        my $nfd = fileno($null);
        opendir my $dh, '/proc/self/fd' or die "/proc/self/fd: $!";
        my @open = grep { /^\d+$/ && $_ > 2 && $_ != $keep && $_ != $nfd } readdir $dh;
        closedir $dh;
        POSIX::dup2($nfd, $_) for @open;
        eval { _backend_main($srv, $log, $parent, $name, $o{proto} // 'http') };
        POSIX::_exit(0);
    }
    close $srv;
    $BACKENDS{$name} = { pid => $pid, port => $port, log => $log };
    $PORTS{"${name}_PORT"} = $port;
    return $port;
}

sub stop_backend {
    my ($name) = @_;
    $name //= 'BACKEND';
    my $b = delete $BACKENDS{$name} or return;
    kill 'TERM', $b->{pid};
    unless (_wait_exit($b->{pid}, 3)) { kill 'KILL', $b->{pid}; _wait_exit($b->{pid}, 2) }
}

# kill_backend($name = 'BACKEND', $signal = 'KILL'): the backend dies as a crashed one would:
# its listening socket closes with it and its connection processes get SIGTERM from the
# kernel (PR_SET_PDEATHSIG). Start it again with start_backend(name => $name, port => N,
# keep_log => 1).
sub kill_backend {
    my ($name, $sig) = @_;
    $name //= 'BACKEND';
    my $b = delete $BACKENDS{$name} or return;
    kill $sig // 'KILL', $b->{pid};
    _wait_exit($b->{pid}, 3);
}

sub _backend_main {
    my ($srv, $log, $parent, $name, $proto) = @_;
    my $serve = { http => \&_backend_conn, fastcgi => \&_fcgi_conn, uwsgi => \&_uwsgi_conn }->{$proto}
        or die "start_backend: no protocol $proto";
    $0 = "intermission-test-backend $name";
    _pdeathsig();
    %LIVE = ();
    %BACKENDS = ();
    $NGX{pid} = undef;
    alarm 0;
    my %kids;
    $SIG{TERM} = sub { kill 'TERM', keys %kids; POSIX::_exit(0) };
    $SIG{INT} = 'DEFAULT';
    $SIG{CHLD} = sub { while ((my $k = waitpid(-1, WNOHANG)) > 0) { delete $kids{$k} } };
    my $sel = IO::Select->new($srv);
    my $seq = 0;
    while (1) {
        POSIX::_exit(0) if getppid() != $parent;
        next unless $sel->can_read(0.5);
        my $c = $srv->accept or next;
        my $t = time;
        $seq++;
        my $k = fork;
        if (!defined $k) { close $c; next }
        if ($k == 0) {
            $SIG{TERM} = 'DEFAULT';
            $SIG{CHLD} = 'DEFAULT';
            _pdeathsig();
            close $srv;
            eval { $serve->($c, $log, $seq, $t) };
            POSIX::_exit(0);
        }
        $kids{$k} = 1;
        close $c;
    }
}

sub _read_more {
    my ($sock, $bufref, $timeout) = @_;
    my $sel = IO::Select->new($sock);
    my $deadline = time + $timeout;
    while (1) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($sock, my $chunk, 65536);
        if (!defined $n) { next if $! == EINTR || $! == EAGAIN; return 0 }
        return 0 if $n == 0;
        $$bufref .= $chunk;
        return $n;
    }
}

# decode a chunked body at the start of $data: (body, bytes consumed) or () if incomplete
sub _parse_chunked {
    my ($data) = @_;
    my ($pos, $body) = (0, '');
    while (1) {
        my $e = index($data, "\r\n", $pos);
        return () if $e < 0;
        my ($hex) = substr($data, $pos, $e - $pos) =~ /^\s*([0-9a-fA-F]+)/
            or die "bad chunk size line";
        my $n = hex $hex;
        $pos = $e + 2;
        if ($n == 0) {
            while (1) {    # trailers, then empty line
                my $e2 = index($data, "\r\n", $pos);
                return () if $e2 < 0;
                return ($body, $e2 + 2) if $e2 == $pos;
                $pos = $e2 + 2;
            }
        }
        return () if length($data) < $pos + $n + 2;
        $body .= substr($data, $pos, $n);
        $pos += $n + 2;
    }
}

sub _parse_head {
    my ($head) = @_;
    my @lines = split /\r\n/, $head;
    my $first = shift @lines // '';
    my %h;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
        $k = lc $k;
        $h{$k} = exists $h{$k} ? "$h{$k}, $v" : $v;
    }
    return ($first, \%h);
}

sub _backend_conn {
    my ($c, $log, $cseq, $tacc) = @_;
    binmode $c;
    setsockopt($c, IPPROTO_TCP, TCP_NODELAY, 1);
    my $buf = '';
    my $idx = 0;
    while (1) {
        my $he;
        while (($he = index($buf, "\r\n\r\n")) < 0) {
            return unless _read_more($c, \$buf, 60);
        }
        my $t_head = time;
        my ($first, $h) = _parse_head(substr($buf, 0, $he));
        $buf = substr($buf, $he + 4);
        my ($method, $uri, $ver) = $first =~ m{^(\S+)\s+(\S+)\s+HTTP/(\d\.\d)$} or return;
        my $body = '';
        if (($h->{'transfer-encoding'} // '') =~ /chunked/i) {
            my @r;
            until (@r = _parse_chunked($buf)) { return unless _read_more($c, \$buf, 60) }
            $body = $r[0];
            $buf = substr($buf, $r[1]);
        } elsif (defined $h->{'content-length'}) {
            my $len = $h->{'content-length'} + 0;
            while (length($buf) < $len) { return unless _read_more($c, \$buf, 60) }
            $body = substr($buf, 0, $len);
            $buf = substr($buf, $len);
        }
        $idx++;
        # arrival time: accept time for the first request of a connection (accept order
        # is the connection order), header time for later ones
        _log_request($log, $idx == 1 ? $tacc : $t_head, $cseq, $idx, $method, $uri, $ver, $h, $body, $t_head);
        # A WebSocket handshake (`Upgrade: websocket`): 101, then every chunk the client
        # sends comes back as "<backend pid>:<chunk>" until either side closes (the pid of
        # the backend's listening process, which a restart changes).
        if (lc($h->{upgrade} // '') eq 'websocket') {
            my $srv = getppid();
            _write_all($c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         . "Connection: Upgrade\r\nX-Backend-Pid: $$\r\n\r\n") or return;
            _write_all($c, "$srv:$buf") or return if length $buf;
            while (1) {
                my $n = sysread($c, my $chunk, 65536);
                next if !defined $n && $! == EINTR;
                return unless $n;
                _write_all($c, "$srv:$chunk") or return;
            }
        }
        # ?stream=N: a server-sent event stream of N events (0: until the client leaves),
        # one every 100 ms, its length unknown, so the response ends with the connection.
        if ($uri =~ /[?&]stream=(\d+)/) {
            my $n = $1;
            _write_all($c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         . "Cache-Control: no-cache\r\nX-Backend-Pid: $$\r\nConnection: close\r\n\r\n")
                or return;
            for (my $i = 0; !$n || $i < $n; $i++) {
                _write_all($c, "data: $$ $i\n\n") or return;
                select(undef, undef, undef, 0.1);
            }
            return;
        }
        # ?once=ID: ?reset= and ?status= apply the first time ID is seen only (a marker file
        # beside the log), so that the request sent again gets an answer.
        my ($once) = $uri =~ /[?&]once=(\w+)/;
        my $fresh = !defined $once || sysopen(my $mk, "$log.once.$once", O_WRONLY | O_CREAT | O_EXCL);
        # ?reset=1: the backend took the request and resets the connection, answering nothing.
        if ($fresh && $uri =~ /[?&]reset=1/) {
            setsockopt($c, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
            close $c;
            return;
        }
        my ($sleep) = $uri =~ /[?&]sleep=(\d+)/;
        sleep($sleep / 1000) if $sleep;
        my ($status) = $uri =~ /[?&]status=(\d{3})/;
        $status = 200 if !defined $status || !$fresh;
        my $conn = lc($h->{connection} // '');
        my $keep = $ver eq '1.1' ? $conn !~ /close/ : $conn =~ /keep-alive/;
        my $rb = "ok $uri";
        my $resp = "HTTP/1.1 $status X\r\nContent-Type: text/plain\r\n"
                 . "Content-Length: " . length($rb) . "\r\n"
                 . "X-Backend-Pid: $$\r\nX-Backend-Conn: $cseq\r\n"
                 . ($keep ? "" : "Connection: close\r\n") . "\r\n";
        $resp .= $rb unless $method eq 'HEAD';
        my $off = 0;
        while ($off < length $resp) {
            my $n = syswrite($c, $resp, length($resp) - $off, $off);
            if (!defined $n) { next if $! == EINTR || $! == EAGAIN; return }
            $off += $n;
        }
        return unless $keep;
    }
}

# one line of a backend's log (see backend_log)
sub _log_request {
    my ($log, $t, $cseq, $idx, $method, $uri, $ver, $h, $body, $t_head) = @_;
    my @f = (sprintf('%.6f', $t), $cseq, $idx, $method, $uri, $ver,
             (map { my $v = $h->{$_}; (defined $v && length $v) ? $v : '-' } qw(x-seq x-worker x-conn)),
             length($body), md5_hex($body), $$, sprintf('%.6f', $t_head), JSON::PP->new->canonical->encode($h));
    s/[\t\r\n]/ /g for @f[0 .. $#f - 1];
    if (open my $lf, '>>', $log) {
        flock($lf, LOCK_EX);
        seek($lf, 0, 2);
        syswrite $lf, join("\t", @f) . "\n";
        flock($lf, LOCK_UN);
        close $lf;
    }
}

# A FastCGI or uwsgi request's parameters as a log line's: (method, uri, headers), the
# headers from HTTP_* (HTTP_X_SEQ is x-seq)
sub _cgi_request {
    my ($p) = @_;
    my %h = map { my $k = lc substr($_, 5); $k =~ tr/_/-/; ($k => $p->{$_}) } grep { /^HTTP_/ } keys %$p;
    return ($p->{REQUEST_METHOD} // '-', $p->{REQUEST_URI} // '-', \%h);
}

# what a FastCGI or uwsgi responder answers for $uri: (status, body), as the HTTP one does
sub _cgi_answer {
    my ($log, $uri) = @_;
    my ($once) = $uri =~ /[?&]once=(\w+)/;
    my $fresh = !defined $once || sysopen(my $mk, "$log.once.$once", O_WRONLY | O_CREAT | O_EXCL);
    my ($status) = $uri =~ /[?&]status=(\d{3})/;
    $status = 200 if !defined $status || !$fresh;
    return ($status, "ok $uri");
}

# FastCGI (the responder role, one request per connection, as nginx sends them without
# fastcgi_keep_conn): records of version 1; BEGIN_REQUEST 1, END_REQUEST 3, PARAMS 4,
# STDIN 5, STDOUT 6
sub _fcgi_conn {
    my ($c, $log, $cseq, $tacc) = @_;
    binmode $c;
    my $buf = '';
    my (%params, $pbuf, $body, $id, $t_head);
    ($pbuf, $body) = ('', '');
    while (1) {
        while (length($buf) < 8) { return unless _read_more($c, \$buf, 60) }
        my ($ver, $type, $rid, $len, $pad) = unpack('CCnnC', $buf);
        while (length($buf) < 8 + $len + $pad) { return unless _read_more($c, \$buf, 60) }
        my $content = substr($buf, 8, $len);
        $buf = substr($buf, 8 + $len + $pad);
        $id //= $rid;
        if ($type == 4 && $len) { $pbuf .= $content }
        elsif ($type == 4) {
            $t_head = time;
            while (length $pbuf) {
                my @n;
                for (1, 2) {
                    my $b = unpack('C', $pbuf);
                    if ($b & 0x80) { push @n, unpack('N', $pbuf) & 0x7fffffff; $pbuf = substr($pbuf, 4) }
                    else { push @n, $b; $pbuf = substr($pbuf, 1) }
                }
                $params{ substr($pbuf, 0, $n[0]) } = substr($pbuf, $n[0], $n[1]);
                $pbuf = substr($pbuf, $n[0] + $n[1]);
            }
        }
        elsif ($type == 5 && $len) { $body .= $content }
        elsif ($type == 5) { last }
    }
    my ($method, $uri, $h) = _cgi_request(\%params);
    _log_request($log, $tacc, $cseq, 1, $method, $uri, 'fastcgi', $h, $body, $t_head // time);
    my ($status, $rb) = _cgi_answer($log, $uri);
    my $out = "Status: $status X\r\nContent-Type: text/plain\r\nX-Backend-Pid: $$\r\n\r\n$rb";
    my $rec = sub { my ($type, $data) = @_; pack('CCnnCC', 1, $type, $id, length $data, 0, 0) . $data };
    _write_all($c, $rec->(6, $out) . $rec->(6, '') . $rec->(3, pack('NCx3', 0, 0)));
    close $c;
}

# uwsgi: a 4-byte header (modifier1, the vars' size little-endian, modifier2), the vars
# (16-bit little-endian sizes), then CONTENT_LENGTH bytes of body; the answer is HTTP's
sub _uwsgi_conn {
    my ($c, $log, $cseq, $tacc) = @_;
    binmode $c;
    my $buf = '';
    while (length($buf) < 4) { return unless _read_more($c, \$buf, 60) }
    my (undef, $size) = unpack('Cv', $buf);
    while (length($buf) < 4 + $size) { return unless _read_more($c, \$buf, 60) }
    my $t_head = time;
    my $vars = substr($buf, 4, $size);
    $buf = substr($buf, 4 + $size);
    my %p;
    while (length($vars) >= 2) {
        my $kl = unpack('v', $vars);
        my $k = substr($vars, 2, $kl);
        my $vl = unpack('v', substr($vars, 2 + $kl, 2));
        $p{$k} = substr($vars, 4 + $kl, $vl);
        $vars = substr($vars, 4 + $kl + $vl);
    }
    my $len = $p{CONTENT_LENGTH} || 0;
    while (length($buf) < $len) { return unless _read_more($c, \$buf, 60) }
    my $body = substr($buf, 0, $len);
    my ($method, $uri, $h) = _cgi_request(\%p);
    _log_request($log, $tacc, $cseq, 1, $method, $uri, 'uwsgi', $h, $body, $t_head);
    my ($status, $rb) = _cgi_answer($log, $uri);
    _write_all($c, "HTTP/1.1 $status X\r\nContent-Type: text/plain\r\nContent-Length: " . length($rb)
                 . "\r\nX-Backend-Pid: $$\r\n\r\n$rb");
    close $c;
}

sub _write_all {
    my ($c, $data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $n = syswrite($c, $data, length($data) - $off, $off);
        if (!defined $n) { next if $! == EINTR || $! == EAGAIN; return 0 }
        $off += $n;
    }
    return 1;
}

# backend_log([$name]) -> list of hashrefs in arrival order:
# { time, conn, idx, method, uri, version, seq, worker, xconn, len, md5, pid, t_head, headers }
sub backend_log {
    my ($name) = @_;
    $name //= 'BACKEND';
    my $path = $BACKENDS{$name} ? $BACKENDS{$name}{log} : prefix() . "/backend-$name.log";
    open my $fh, '<', $path or return ();
    flock($fh, LOCK_SH);
    my @lines = <$fh>;
    close $fh;
    my @r;
    for my $l (@lines) {
        chomp $l;
        my @f = split /\t/, $l, 14;
        next unless @f == 14;
        my %r;
        @r{qw(time conn idx method uri version seq worker xconn len md5 pid t_head)} = @f[0 .. 12];
        $r{$_} eq '-' and $r{$_} = undef for qw(seq worker xconn);
        $r{headers} = eval { JSON::PP->new->decode($f[13]) } || {};
        push @r, \%r;
    }
    @r = sort { $a->{time} <=> $b->{time} || $a->{conn} <=> $b->{conn} || $a->{idx} <=> $b->{idx} } @r;
    return @r;    # count in scalar context
}

# ---------------------------------------------------------------- HTTP client

# build_request(method => 'GET', path => '/', version => '1.1', host => 'localhost',
#               headers => [k => v, ...] | {k => v}, body => $bytes, chunked => 0,
#               keepalive => 1) -> raw request bytes
sub build_request {
    my (%r) = @_;
    my $method = $r{method} // 'GET';
    my $ver = $r{version} // '1.1';
    my @h = ref $r{headers} eq 'HASH' ? (map { ($_, $r{headers}{$_}) } sort keys %{ $r{headers} })
          : @{ $r{headers} // [] };
    my %has;
    for (my $i = 0; $i < @h; $i += 2) { $has{ lc $h[$i] } = 1 }
    my $req = "$method " . ($r{path} // '/') . " HTTP/$ver\r\n";
    $req .= "Host: " . ($r{host} // 'localhost') . "\r\n" unless $has{host};
    my $keep = $r{keepalive} // 1;
    if (!$has{connection}) {
        $req .= "Connection: close\r\n" if $ver eq '1.1' && !$keep;
        $req .= "Connection: keep-alive\r\n" if $ver ne '1.1' && $keep;
    }
    my $body = $r{body};
    if ($r{chunked}) {
        $req .= "Transfer-Encoding: chunked\r\n";
        my $enc = '';
        my $b = $body // '';
        while (length $b) {
            my $part = substr($b, 0, 8192, '');
            $enc .= sprintf("%x\r\n", length $part) . $part . "\r\n";
        }
        $body = $enc . "0\r\n\r\n";
    } elsif (!$has{'content-length'}) {
        if (defined $body) { $req .= "Content-Length: " . length($body) . "\r\n" }
        elsif ($method =~ /^(POST|PUT)$/) { $req .= "Content-Length: 0\r\n" }
    }
    for (my $i = 0; $i < @h; $i += 2) { $req .= "$h[$i]: $h[$i + 1]\r\n" }
    $req .= "\r\n";
    $req .= $body if defined $body;
    return $req;
}

# scope_counters($scope) -> the scope's status counters ({} if none)
sub scope_counters { my $s = scope_status($_[0]); $s ? $s->{counters} : {} }

# wait_down($scope, $timeout, $want = 1) -> true once the scope's "down" is $want
# (intermission_on_failure); on timeout diags the last value seen
sub wait_down {
    my ($scope, $timeout, $want) = @_;
    $want //= 1;
    my $last;
    my $ok = wait_for(sub {
        my $s = scope_status($scope) or return 0;
        $last = $s->{down};
        defined $last && ($last ? 1 : 0) == $want;
    }, $timeout);
    Test::More::diag("wait_down($scope, want $want): last down=" . ($last // 'undef')) unless $ok;
    return $ok;
}

# connect_failures($uri) -> how many "connect() failed" lines nginx logged for requests to $uri
sub connect_failures {
    my ($uri) = @_;
    return scalar error_log_lines(qr/connect\(\) failed.*request: "\w+ \Q$uri\E HTTP/);
}

# send_only($port, $path) -> a connection with a GET of $path sent (Connection: close) and
# nothing read: for a request that is held
sub send_only {
    my ($port, $path) = @_;
    my $c = http_connect($port);
    $c->send_request(path => $path, keepalive => 0);
    return $c;
}

# json_ok($what, $text) -> the JSON document $text holds ({} if none), with a test that it
# parses (e.g. intermissionctl's --json output)
sub json_ok {
    my ($what, $out) = @_;
    my $j = eval { JSON::PP->new->decode($out) };
    Test::More::ok($j, "$what: --json output parses") or Test::More::diag("output: $out");
    return $j || {};
}

# not_paused($what, $scope = 'default') -> a test that the scope is not paused
sub not_paused {
    my ($what, $scope) = @_;
    my $s = scope_status($scope // 'default');
    Test::More::ok($s && !$s->{paused}, "$what: nothing left paused");
}

# ws_open($port, $path, %o) -> (conn, status, \%headers): sends a WebSocket handshake and
# reads the answer's head (status 101 once it is upgraded; () on timeout: e.g. held).
# o: timeout => secs, headers => [...] (more request headers)
sub ws_open {
    my ($port, $path, %o) = @_;
    my $c = http_connect($port);
    $c->send_request(path => $path, headers => ['Upgrade', 'websocket', 'Connection', 'Upgrade',
                                                'Sec-WebSocket-Version', '13',
                                                @{ $o{headers} // [] }]);
    my ($st, $h) = $c->read_head($o{timeout});
    return ($c, $st, $h);
}

# http_connect($port, timeout => 5, local_addr => '127.0.0.2') -> Intermission::Test::Conn
# (dies if it cannot connect); local_addr binds the client socket to that source address
# (any 127/8 address works over loopback).
sub http_connect {
    my ($port, %o) = @_;
    return Intermission::Test::Conn->new($port, %o);
}

# http_request($port, %req) -> (status, \%headers, body) or () on timeout / close.
# Like build_request's options plus timeout => secs and local_addr => '127.0.0.2' (the
# client's source address); keepalive defaults to 0 here.
sub http_request {
    my ($port, %r) = @_;
    my $c = eval { http_connect($port, map { exists $r{$_} ? ($_ => $r{$_}) : () } qw(local_addr)) }
        or return wantarray ? () : undef;
    $c->send_request(keepalive => 0, %r);
    my @resp = $c->read_response($r{timeout});
    $c->close;
    return wantarray ? @resp : $resp[0];
}

sub http_get {
    my ($port, $path, %r) = @_;
    return http_request($port, method => 'GET', path => $path, %r);
}

sub http_post {
    my ($port, $path, $body, %r) = @_;
    return http_request($port, method => 'POST', path => $path, body => $body, %r);
}

# read_responses($timeout, @conns) -> list (one per conn) of [status, \%headers, body, time]
# or undef; reads the next response of every connection concurrently under one deadline.
# time: when the response was complete (epoch seconds, Time::HiRes).
sub read_responses {
    my ($timeout, @conns) = @_;
    my $deadline = time + _t($timeout);
    my @res = (undef) x @conns;
    my %todo = map { $_ => 1 } 0 .. $#conns;
    while (%todo) {
        for my $i (keys %todo) {
            my @r = $conns[$i]->_try_parse;
            if (@r) { $res[$i] = [@r, time]; delete $todo{$i} }
            elsif ($conns[$i]{eof}) { delete $todo{$i} }
        }
        last unless %todo;
        my $left = $deadline - time;
        last if $left <= 0;
        my $rs = IO::Select->new(map { $conns[$_]{sock} } keys %todo);
        my $ws = IO::Select->new(map { $conns[$_]{sock} } grep { length $conns[$_]{wbuf} } keys %todo);
        IO::Select->select($rs, $ws, undef, $left > 0.05 ? 0.05 : $left);
        $conns[$_]->_io_nb for keys %todo;
    }
    return @res;
}

# none_readable($secs, @conns) -> true if none of the connections received anything
# (data or close) within $secs
sub none_readable {
    my ($secs, @conns) = @_;
    my $deadline = time + $secs;
    while (1) {
        for my $c (@conns) { $c->_io_nb; return 0 if length $c->{rbuf} || $c->{eof} }
        my $left = $deadline - time;
        return 1 if $left <= 0;
        my $rs = IO::Select->new(map { $_->{sock} } @conns);
        IO::Select->select($rs, undef, undef, $left > 0.05 ? 0.05 : $left);
    }
}

# flush every open connection's pending request bytes without blocking
sub pump_all {
    for my $id (keys %LIVE) {
        my $c = $LIVE{$id};
        if (!$c || !$c->{sock}) { delete $LIVE{$id}; next }
        $c->_flush_nb if length $c->{wbuf};
    }
}

# ---------------------------------------------------------------- control endpoint

sub ctl_prefix { $CTL_PREFIX = $_[0] if @_; $CTL_PREFIX }

sub _unbool {
    my ($v) = @_;
    if (ref $v eq 'HASH') { $v->{$_} = _unbool($v->{$_}) for keys %$v; return $v }
    if (ref $v eq 'ARRAY') { $_ = _unbool($_) for @$v; return $v }
    if (JSON::PP::is_bool($v)) { return $v ? 1 : 0 }
    return $v;
}

sub _qs {
    my ($args) = @_;
    return '' unless defined $args;
    return length($args) ? "?$args" : '' unless ref $args;
    my @p = ref $args eq 'HASH' ? map { ($_, $args->{$_}) } sort keys %$args : @$args;
    my @kv;
    while (my ($k, $v) = splice(@p, 0, 2)) {
        s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge for $k, $v;
        push @kv, "$k=$v";
    }
    return '?' . join('&', @kv);
}

# ctl($method, $cmd, $args, %opt) -> (status, \%headers, $json (booleans as 1/0) or undef, raw body)
# $args: raw query string ('scope=alpha'), hashref or arrayref of pairs; undef = none.
# opt: port (default port('CTL_PORT')), timeout, headers.
sub ctl {
    my ($method, $cmd, $args, %o) = @_;
    pump_all();
    my $port = $o{port} // port('CTL_PORT');
    my $path = $o{path} // ($CTL_PREFIX . $cmd . _qs($args));
    my %req = (method => $method, path => $path, timeout => $o{timeout});
    $req{headers} = $o{headers} if $o{headers};
    my ($st, $h, $body) = http_request($port, %req);
    my $json = _ctl_json($body);
    return wantarray ? ($st, $h, $json, $body) : $st;
}

sub _ctl_json {
    my ($body) = @_;
    return undef unless defined $body && length $body;
    return eval { _unbool(JSON::PP->new->decode($body)) };
}

# ctl_send($method, $cmd, $args, %opt) -> connection with the control request sent, for a
# request whose answer comes later (drain, enable?wait=drained). Same arguments as ctl();
# opt conn => an open keep-alive connection to send it on (default: a new one),
# keepalive => 1 to keep the connection open after the answer (default 0).
# Read the answer with ctl_recv($conn) (or read_responses for several at once).
sub ctl_send {
    my ($method, $cmd, $args, %o) = @_;
    pump_all();
    my $path = $o{path} // ($CTL_PREFIX . $cmd . _qs($args));
    my $c = $o{conn} // http_connect($o{port} // port('CTL_PORT'));
    $c->send_request(method => $method, path => $path, keepalive => $o{keepalive} // 0,
                     ($o{headers} ? (headers => $o{headers}) : ()));
    return $c;
}

# ctl_recv($conn, $timeout = 5) -> (status, \%headers, $json or undef, raw body, time)
# time: when the answer was complete; () on timeout or close.
sub ctl_recv {
    my ($c, $timeout) = @_;
    my ($st, $h, $body) = $c->read_response($timeout);
    return () unless defined $st;
    my $t = time;
    return wantarray ? ($st, $h, _ctl_json($body), $body, $t) : $st;
}

# ctl_status(%opt) -> decoded status JSON or undef
sub ctl_status {
    my (%o) = @_;
    my ($st, undef, $j) = ctl('GET', 'status', $o{scope} ? "scope=$o{scope}" : undef, %o);
    return ($st && $st == 200) ? $j : undef;
}

# scope_status($name) -> the scope's object from status, or undef
sub scope_status {
    my ($name, %o) = @_;
    my $j = ctl_status(%o) or return undef;
    my ($s) = grep { $_->{name} eq $name } @{ $j->{scopes} || [] };
    return $s;
}

# pinned_connections($port, $per) -> { worker pid => [keep-alive connections] }: $per
# connections to each of two workers, found by asking `location = /who { return 200 "$pid"; }`
# on new connections (the kernel picks the worker); fewer if the workers could not be found
sub pinned_connections {
    my ($port, $per) = @_;
    my (%pinned, @spare);
    for (1 .. 400) {
        my $c = http_connect($port);
        my ($s, undef, $pid) = $c->request(method => 'GET', path => '/who', keepalive => 1);
        last unless $s && $s == 200;
        if (keys %pinned < 2 || $pinned{$pid}) { push @{ $pinned{$pid} }, $c } else { push @spare, $c }
        last if keys %pinned == 2 && !grep { @$_ < $per } values %pinned;
    }
    $_->close for @spare;
    return \%pinned;
}

# most_at_once(@entries) -> how many requests the recording backend had at once at most:
# each of backend_log's entries is at the backend from its t_head for the ?sleep=ms its URI
# asks for
sub most_at_once {
    my (@e) = @_;
    my @ev;
    for (@e) {
        my ($ms) = $_->{uri} =~ /sleep=(\d+)/;
        push @ev, [$_->{t_head}, 1], [$_->{t_head} + ($ms // 0) / 1000, -1];
    }
    my ($n, $most) = (0, 0);
    for (sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @ev) {
        $n += $_->[1];
        $most = $n if $n > $most;
    }
    return $most;
}

# lis(@numbers) -> the length of the longest increasing subsequence: how much of a sequence
# is in order
sub lis {
    my @tails;
    for my $x (@_) {
        my ($lo, $hi) = (0, scalar @tails);
        while ($lo < $hi) { my $m = int(($lo + $hi) / 2); if ($tails[$m] < $x) { $lo = $m + 1 } else { $hi = $m } }
        $tails[$lo] = $x;
    }
    return scalar @tails;
}

# total_held() -> sum of "held" over all scopes (undef if status fails)
sub total_held {
    my $j = ctl_status(@_) or return undef;
    my $n = 0;
    $n += $_->{held} // 0 for @{ $j->{scopes} || [] };
    return $n;
}

# wait_held($scope, $n, $timeout = 5) -> true once the scope's "held" equals $n
# ($scope undef: the sum over all scopes); on timeout diags the last status seen.
sub wait_held {
    my ($scope, $n, $timeout) = @_;
    my $last;
    my $ok = wait_for(sub {
        if (defined $scope) {
            my $s = scope_status($scope);
            $last = $s ? $s->{held} : undef;
        } else {
            $last = total_held();
        }
        defined $last && $last == $n;
    }, $timeout);
    Test::More::diag("wait_held(" . ($scope // 'all') . ", $n): last held=" . ($last // 'undef'))
        unless $ok;
    return $ok;
}

# wait_inflight($scope, $n, $timeout = 5) -> true once the scope's "inflight" equals $n
# ($scope undef: the sum over all scopes); on timeout diags the last value seen.
sub wait_inflight {
    my ($scope, $n, $timeout) = @_;
    my $last;
    my $ok = wait_for(sub {
        my $j = ctl_status() or return 0;
        my @s = grep { !defined $scope || $_->{name} eq $scope } @{ $j->{scopes} || [] };
        return 0 unless @s;
        $last = 0;
        for (@s) { return 0 unless defined $_->{inflight}; $last += $_->{inflight} }
        $last == $n;
    }, $timeout);
    Test::More::diag("wait_inflight(" . ($scope // 'all') . ", $n): last inflight=" . ($last // 'undef'))
        unless $ok;
    return $ok;
}

# ---------------------------------------------------------------- background commands

my %BG;    # pid => handle
my $BG_SEQ = 0;

# bg_start(@cmd) -> handle: runs a command (e.g. nghttp) in the background, stdout and
# stderr to a file in the prefix. Killed at the end of the test file if still running.
# bg_start(\%opt, @cmd) with options:
#   stderr => 1        stderr to a file of its own (bg_stderr); bg_output is stdout only
#   env => { K => V }  added to the environment (undef value: removed)
#   stdin => $bytes    standard input (default /dev/null)
sub bg_start {
    my (@cmd) = @_;
    my %o = ref $cmd[0] eq 'HASH' ? %{ shift @cmd } : ();
    my $p = prefix();
    my $seq = ++$BG_SEQ;
    my $out = "$p/bg-$seq.out";
    my $err = $o{stderr} ? "$p/bg-$seq.err" : undef;
    my $in = defined $o{stdin} ? write_file("bg-$seq.in", $o{stdin}) : '/dev/null';
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        alarm 0;
        _pdeathsig();
        for my $k (keys %{ $o{env} || {} }) {
            if (defined $o{env}{$k}) { $ENV{$k} = $o{env}{$k} } else { delete $ENV{$k} }
        }
        open STDIN, '<', $in or POSIX::_exit(126);
        open STDOUT, '>', $out or POSIX::_exit(126);
        if (defined $err) { open STDERR, '>', $err or POSIX::_exit(126) }
        else { open STDERR, '>&', \*STDOUT }
        { no warnings q(exec); exec @cmd; }
        POSIX::_exit(127);
    }
    my $h = { pid => $pid, out => $out, err => $err, cmd => [@cmd], started => time };
    $BG{$pid} = $h;
    return $h;
}

# bg_wait($h, $timeout = 5) -> (exit code, output) once it exited; () if still running
# at the timeout (it keeps running; bg_kill it). A command killed by a signal gives
# exit code 128 + signal.
sub bg_wait {
    my ($h, $timeout) = @_;
    my $deadline = time + Intermission::Test::_t($timeout);
    while (!defined $h->{rc}) {
        my $r = waitpid($h->{pid}, WNOHANG);
        if ($r == $h->{pid}) {
            $h->{rc} = ($? & 127) ? 128 + ($? & 127) : $? >> 8;
            $h->{ended} = time;
            delete $BG{ $h->{pid} };
            last;
        }
        if ($r == -1) { $h->{rc} = -1; delete $BG{ $h->{pid} }; last }
        return () if time >= $deadline;
        pump_all();
        sleep 0.02;
    }
    return ($h->{rc}, bg_output($h));
}

# bg_output($h) -> what the command wrote so far
sub bg_output { my ($h) = @_; read_file_text($h->{out}) // '' }

# bg_stderr($h) -> what the command wrote to stderr so far (bg_start with stderr => 1)
sub bg_stderr { my ($h) = @_; defined $h->{err} ? read_file_text($h->{err}) // '' : '' }

# run_cmd(@cmd) or run_cmd(\%opt, @cmd) -> (exit code, stdout, stderr): runs a command to
# its end (bg_start's options, plus timeout => secs, default 30; at the timeout it is
# killed and the exit code is undef). Connections with pending writes are pumped meanwhile.
sub run_cmd {
    my (@cmd) = @_;
    my %o = ref $cmd[0] eq 'HASH' ? %{ shift @cmd } : ();
    my $h = bg_start({ %o, stderr => 1 }, @cmd);
    my ($rc) = bg_wait($h, $o{timeout} // 30);
    if (!defined $rc) {
        Test::More::diag("run_cmd: @cmd: still running after " . ($o{timeout} // 30) . " s, killed");
        bg_kill($h);
    }
    return ($rc, bg_output($h), bg_stderr($h));
}

# bg_kill($h, $signal = 'KILL') -> (exit code, output) after it exited
sub bg_kill {
    my ($h, $sig) = @_;
    return ($h->{rc}, bg_output($h)) if defined $h->{rc};
    kill $sig // 'KILL', $h->{pid};
    return bg_wait($h, 5);
}

# ---------------------------------------------------------------- scripts/intermissionctl

our $INTERMISSIONCTL = $ENV{INTERMISSIONCTL} // "$ROOT/scripts/intermissionctl";

# intermissionctl(@args) or intermissionctl(\%opt, @args) -> (exit code, stdout, stderr):
# runs scripts/intermissionctl (run_cmd's options; timeout default 30 s).
sub intermissionctl {
    my (@a) = @_;
    my %o = ref $a[0] eq 'HASH' ? %{ shift @a } : ();
    return run_cmd({ timeout => 30, %o }, $INTERMISSIONCTL, @a);
}

# intermissionctl_bg(@args) or intermissionctl_bg(\%opt, @args) -> bg handle (stderr apart:
# bg_output is its stdout, bg_stderr its stderr); end it with bg_wait or bg_kill.
sub intermissionctl_bg {
    my (@a) = @_;
    my %o = ref $a[0] eq 'HASH' ? %{ shift @a } : ();
    return bg_start({ stderr => 1, %o }, $INTERMISSIONCTL, @a);
}

# gated_command($tag, $exit = 0) -> a command (list) for `intermissionctl run -- ...`: it
# prints INTERMISSION_ENDPOINTS, writes its pid to <prefix>/<tag>.started, waits (at most
# 20 s) until gate_open($tag), prints "command <tag> done" and exits with $exit.
sub gated_command {
    my ($tag, $exit) = @_;
    my $g = prefix() . "/$tag";
    return ('sh', '-c', 'echo "endpoints=$INTERMISSION_ENDPOINTS"; echo $$ > "$1.started"; i=0; '
                      . 'while [ ! -e "$1.go" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; '
                      . 'echo "command $2 done"; exit $3', 'sh', $g, $tag, $exit // 0);
}

# gate_started($tag, $timeout = 5) -> the command's pid once it started, else undef
sub gate_started {
    my ($tag, $timeout) = @_;
    my $f = prefix() . "/$tag.started";
    return undef unless wait_for(sub { -s $f }, $timeout);
    my $pid = read_file_text($f) // '';
    $pid =~ s/\s+//g;
    return $pid || undef;
}

# gate_open($tag): lets the gated command finish
sub gate_open { my ($tag) = @_; write_file("$tag.go", '') }

# ---------------------------------------------------------------- formats

# parse_prometheus($text) -> arrayref of { name, type, samples => [{ name, labels, value }] }
# as parsed by Python's prometheus_client (text_string_to_metric_families); dies with the
# parser's message if the text does not parse. Note: the parser names a counter family
# without its "_total" suffix (the samples keep it). Non-finite values come as strings
# ("inf", "nan").
sub parse_prometheus {
    my ($text) = @_;
    my $p = prefix();
    my $in = write_file("prom-input.txt", $text);
    my $py = <<'PY';
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding="utf-8").read()
out = []
try:
    for f in text_string_to_metric_families(text):
        out.append({"name": f.name, "type": f.type, "samples": [
            {"name": s.name, "labels": dict(s.labels),
             "value": s.value if math.isfinite(s.value) else str(s.value)}
            for s in f.samples]})
except Exception as e:
    sys.stdout.write(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
    sys.exit(0)
sys.stdout.write(json.dumps({"families": out}))
PY
    my $script = write_file("prom-parse.py", $py);
    my $pid = open(my $fh, '-|');
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        alarm 0;
        open STDERR, '>&', \*STDOUT;
        { no warnings q(exec); exec '/usr/bin/python3', $script, $in; }
        POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    my $j = eval { JSON::PP->new->decode($out) } or die "parse_prometheus: python failed: $out\n";
    die "parse_prometheus: $j->{error}\n" if $j->{error};
    return $j->{families};
}

# rfc3339_epoch('2026-11-21T11:17:15.309Z') -> epoch seconds (with fractions), undef if
# the string is not an RFC 3339 date-time (Z or +hh:mm / -hh:mm offset).
sub rfc3339_epoch {
    my ($s) = @_;
    return undef unless defined $s;
    my ($Y, $M, $D, $h, $m, $sec, $frac, $tz) =
        $s =~ /^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$/
        or return undef;
    require Time::Local;
    my $e = eval { Time::Local::timegm($sec, $m, $h, $D, $M - 1, $Y) } // return undef;
    $e += $frac if defined $frac;
    if ($tz =~ /^([+-])(\d\d):(\d\d)$/) {
        my $off = $2 * 3600 + $3 * 60;
        $e -= $1 eq '+' ? $off : -$off;
    }
    return $e;
}

# ---------------------------------------------------------------- /proc

# fds_of($pid, $link) -> the descriptors of a process whose link is $link
# ('anon_inode:[eventfd]', 'anon_inode:[eventpoll]')
sub fds_of {
    my ($pid, $what) = @_;
    opendir(my $d, "/proc/$pid/fd") or return ();
    my @fds = sort { $a <=> $b }
              grep { /^\d+$/ && (readlink("/proc/$pid/fd/$_") // '') eq $what } readdir $d;
    closedir $d;
    return @fds;
}

# fdinfo($pid, $fd) -> the text of /proc/<pid>/fdinfo/<fd>, undef if none
sub fdinfo {
    my ($pid, $fd) = @_;
    open(my $fh, '<', "/proc/$pid/fdinfo/$fd") or return undef;
    local $/;
    my $t = <$fh>;
    close $fh;
    return $t;
}

# eventfd_id($pid, $fd) -> the kernel's id of an eventfd (the same in every process sharing it)
sub eventfd_id { my $t = fdinfo(@_) // return undef; $t =~ /^eventfd-id:\s*(\d+)/m ? $1 : undef }

# eventfd_count($pid, $fd) -> the eventfd's counter (the kernel shows it in hex): the module
# never reads its eventfd, so the counter is the number of writes
sub eventfd_count {
    my $t = fdinfo(@_) // return undef;
    return $t =~ /^eventfd-count:\s*([0-9a-fA-F]+)\s*$/m ? hex($1) : undef;
}

# module_eventfd($pid) -> the module's eventfd in $pid (undef if it has none): the master makes
# it before it forks (nginx's own epoll notification eventfd is made in each process after
# the fork), so it is the one the process shares with the master: the same eventfd-id where
# the kernel shows one, else the same descriptor number.
sub module_eventfd {
    my ($pid) = @_;
    my @m = fds_of(nginx_pid(), 'anon_inode:[eventfd]');
    return undef unless @m == 1;
    my $id = eventfd_id(nginx_pid(), $m[0]);
    for my $fd (fds_of($pid, 'anon_inode:[eventfd]')) {
        return $fd if defined $id ? (eventfd_id($pid, $fd) // -1) == $id : $fd == $m[0];
    }
    return undef;
}

# watches_eventfd($pid) -> (1/0, description): whether an epoll set of $pid has the module's
# eventfd
sub watches_eventfd {
    my ($pid) = @_;
    my $efd = module_eventfd($pid);
    return (0, "no module eventfd") unless defined $efd;
    my @ep = fds_of($pid, 'anon_inode:[eventpoll]');
    for my $ep (@ep) {
        my $t = fdinfo($pid, $ep) // next;
        return (1, "eventfd $efd in epoll fd $ep") if $t =~ /^tfd:\s*\Q$efd\E\s/m;
    }
    return (0, "eventfd $efd, epoll fds (@ep) do not watch it");
}

# ---------------------------------------------------------------- misc

# wait_for(sub { ... }, $timeout = 5, $interval = 0.02) -> the sub's true value, or false
sub wait_for {
    my ($code, $timeout, $interval) = @_;
    my $deadline = time + _t($timeout);
    $interval //= 0.02;
    while (1) {
        pump_all();
        my $v = $code->();
        return $v if $v;
        return $v if time >= $deadline;
        sleep $interval;
    }
}

sub _cleanup {
    for my $id (keys %LIVE) { my $c = $LIVE{$id}; $c->close if $c }
    for my $pid (keys %BG) { kill 'KILL', $pid; waitpid($pid, 0); delete $BG{$pid} }
    stop_nginx() if $NGX{pid};
    $_->stop for grep { $_->{pid} } values %INSTANCES;
    stop_backend($_) for keys %BACKENDS;
}

# finish(): stop nginx and backends, check the error log, done_testing.
sub finish {
    _cleanup();
    my @bad = error_log_alerts();
    Test::More::ok(!@bad, 'no alert/crit/emerg/crash in error log')
        or Test::More::diag(join("\n", @bad));
    $FINISHED = 1;
    Test::More::done_testing();
}

END {
    if ($$ == $MAIN_PID) {
        my $rc = $?;
        alarm 0;
        eval { _cleanup() };
        if (defined $PREFIX && -d $PREFIX) {
            my $failed = !$FINISHED || !Test::More->builder->is_passing;
            if ($failed) {
                my @bad = error_log_alerts();
                Test::More::diag("error log problems:\n" . join("\n", @bad)) if @bad;
                my $tail = error_log_tail(20);
                Test::More::diag("error.log tail:\n$tail") if length $tail;
                for my $i (sort keys %INSTANCES) {
                    my $t = $INSTANCES{$i}->error_log_tail(20);
                    Test::More::diag("$i/error.log tail:\n$t") if length $t;
                }
            }
            if ($ENV{TEST_KEEP_SERVROOT}) {
                Test::More::diag("servroot kept: $PREFIX") if $failed;
            } else {
                remove_tree($PREFIX);
            }
        }
        $? = $rc;
    }
}

# ================================================================= connection object

package Intermission::Test::Conn;

use strict;
use warnings;
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Select;
use IO::Socket::INET;
use Scalar::Util qw(weaken);
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(time);

sub new {
    my ($class, $port, %o) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                  Timeout => $o{timeout} // 5,
                                  ($o{local_addr} ? (LocalAddr => $o{local_addr}) : ()))
        or die "connect to 127.0.0.1:$port: $!\n";
    binmode $s;
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    $s->blocking(0);
    my $self = bless { sock => $s, rbuf => '', wbuf => '', methods => [], eof => 0,
                       port => $port, id => ++$CONN_ID }, $class;
    $LIVE{ $self->{id} } = $self;
    weaken($LIVE{ $self->{id} });
    return $self;
}

sub sock      { $_[0]{sock} }
sub local_port { $_[0]{sock} ? $_[0]{sock}->sockport : undef }
sub eof       { $_[0]{eof} }
sub last_response { $_[0]{last} }

# send_request(%req) (see build_request; keepalive defaults to 1)
sub send_request {
    my ($self, %r) = @_;
    push @{ $self->{methods} }, $r{method} // 'GET';
    $self->send_raw(Intermission::Test::build_request(%r));
    return $self;
}

# pipeline(\%req1, \%req2, ...): all requests written with one write
sub pipeline {
    my ($self, @reqs) = @_;
    my $raw = '';
    for my $r (@reqs) {
        push @{ $self->{methods} }, $r->{method} // 'GET';
        $raw .= Intermission::Test::build_request(%$r);
    }
    $self->send_raw($raw);
    return $self;
}

# send_raw($bytes): queue bytes and write what the socket takes now (the rest is written
# by later calls: flush, readable, read_response, wait_for, ctl)
sub send_raw {
    my ($self, $data) = @_;
    die "send on closed connection" unless $self->{sock};
    $self->{wbuf} .= $data;
    $self->_flush_nb;
    return $self;
}

sub _flush_nb {
    my ($self) = @_;
    my $s = $self->{sock} or return;
    while (length $self->{wbuf}) {
        my $n = syswrite($s, $self->{wbuf}, 65536);
        if (!defined $n) {
            return if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            $self->{werr} = "$!";
            $self->{wbuf} = '';
            return;
        }
        substr($self->{wbuf}, 0, $n, '');
    }
}

sub _read_nb {
    my ($self) = @_;
    my $s = $self->{sock} or return;
    return if $self->{eof};
    while (1) {
        my $n = sysread($s, my $chunk, 65536);
        if (!defined $n) {
            return if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            $self->{eof} = 1;
            $self->{rerr} = "$!";
            return;
        }
        if ($n == 0) { $self->{eof} = 1; return }
        $self->{rbuf} .= $chunk;
    }
}

sub _io_nb { my ($self) = @_; $self->_flush_nb if length $self->{wbuf}; $self->_read_nb }

# flush($timeout = 5) -> true when everything queued has been written
sub flush {
    my ($self, $timeout) = @_;
    my $deadline = time + Intermission::Test::_t($timeout);
    while (length $self->{wbuf}) {
        $self->_flush_nb;
        last unless length $self->{wbuf};
        my $left = $deadline - time;
        return 0 if $left <= 0;
        IO::Select->select(undef, IO::Select->new($self->{sock}), undef, $left);
    }
    return 1;
}

sub _wait_io {
    my ($self, $t) = @_;
    my $s = $self->{sock} or return;
    my $ws = IO::Select->new;
    $ws->add($s) if length $self->{wbuf};
    IO::Select->select(IO::Select->new($s), $ws, undef, $t);
    $self->_io_nb;
}

# readable($timeout = 0) -> true if response bytes (or a close) arrived within $timeout
sub readable {
    my ($self, $timeout) = @_;
    Intermission::Test::pump_all();
    my $deadline = time + ($timeout // 0);
    while (1) {
        $self->_io_nb;
        return 1 if length $self->{rbuf} || $self->{eof};
        my $left = $deadline - time;
        return 0 if $left <= 0;
        $self->_wait_io($left > 0.05 ? 0.05 : $left);
    }
}

# closed($timeout = 0) -> true if the peer closed the connection within $timeout
sub closed {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // 0) * $Intermission::Test::SLOW;
    while (1) {
        $self->_io_nb;
        return 1 if $self->{eof};
        my $left = $deadline - time;
        return 0 if $left <= 0;
        $self->_wait_io($left > 0.05 ? 0.05 : $left);
    }
}

# parse one response from rbuf: (status, \%headers, body) or () if incomplete
sub _try_parse {
    my ($self) = @_;
    $self->_io_nb;
    while (1) {
        my $he = index($self->{rbuf}, "\r\n\r\n");
        return () if $he < 0;
        my ($first, $h) = Intermission::Test::_parse_head(substr($self->{rbuf}, 0, $he));
        my ($ver, $status) = $first =~ m{^HTTP/(\d\.\d)\s+(\d{3})}
            or die "bad status line: $first";
        my $bstart = $he + 4;
        if ($status >= 100 && $status < 200 && $status != 101) {
            substr($self->{rbuf}, 0, $bstart, '');
            next;
        }
        my $method = $self->{methods}[0] // 'GET';
        my ($body, $consumed);
        if ($method eq 'HEAD' || $status == 204 || $status == 304) {
            ($body, $consumed) = ('', $bstart);
        } elsif (($h->{'transfer-encoding'} // '') =~ /chunked/i) {
            my @r = Intermission::Test::_parse_chunked(substr($self->{rbuf}, $bstart));
            return () unless @r;
            ($body, $consumed) = ($r[0], $bstart + $r[1]);
        } elsif (defined $h->{'content-length'}) {
            my $len = $h->{'content-length'} + 0;
            return () if length($self->{rbuf}) < $bstart + $len;
            ($body, $consumed) = (substr($self->{rbuf}, $bstart, $len), $bstart + $len);
        } else {
            return () unless $self->{eof};
            ($body, $consumed) = (substr($self->{rbuf}, $bstart), length $self->{rbuf});
        }
        substr($self->{rbuf}, 0, $consumed, '');
        shift @{ $self->{methods} };
        $self->{last} = { status => $status, version => $ver, headers => $h, body => $body,
                          status_line => $first };
        return ($status, $h, $body);
    }
}

# read_response($timeout = 5) -> (status, \%headers, body) or () on timeout / close
sub read_response {
    my ($self, $timeout) = @_;
    my $deadline = time + Intermission::Test::_t($timeout);
    while (1) {
        my @r = $self->_try_parse;
        return wantarray ? @r : $r[0] if @r;
        return wantarray ? () : undef if $self->{eof};
        my $left = $deadline - time;
        return wantarray ? () : undef if $left <= 0;
        $self->_wait_io($left > 0.1 ? 0.1 : $left);
    }
}

# request(%req) -> send and read one response (status, \%headers, body)
sub request {
    my ($self, %r) = @_;
    $self->send_request(%r);
    return $self->read_response($r{timeout});
}

sub pending_bytes { length $_[0]{rbuf} }

# read_head($timeout = 5) -> (status, \%headers) of a response whose body is not HTTP (101),
# taken off the buffer; () on timeout or close
sub read_head {
    my ($self, $timeout) = @_;
    return () unless defined $self->read_until(qr/\r\n\r\n/, $timeout, 1);
    my $he = index($self->{rbuf}, "\r\n\r\n");
    my ($first, $h) = Intermission::Test::_parse_head(substr($self->{rbuf}, 0, $he));
    substr($self->{rbuf}, 0, $he + 4, '');
    my ($status) = $first =~ m{^HTTP/\d\.\d\s+(\d{3})} or return ();
    return ($status, $h);
}

# read_until($re, $timeout = 5, $keep) -> the received bytes up to the end of the first match
# of $re (taken off the buffer unless $keep), or undef on timeout or close
sub read_until {
    my ($self, $re, $timeout, $keep) = @_;
    my $deadline = time + Intermission::Test::_t($timeout);
    while (1) {
        if ($self->{rbuf} =~ $re) {
            my $end = $+[0];
            return $keep ? substr($self->{rbuf}, 0, $end) : substr($self->{rbuf}, 0, $end, '');
        }
        return undef if $self->{eof};
        my $left = $deadline - time;
        return undef if $left <= 0;
        $self->_wait_io($left > 0.05 ? 0.05 : $left);
    }
}

sub close {
    my ($self) = @_;
    if ($self->{sock}) { close $self->{sock}; $self->{sock} = undef }
    delete $LIVE{ $self->{id} };
    $self->{eof} = 1;
}

sub DESTROY { my ($self) = @_; delete $LIVE{ $self->{id} } if defined $self->{id} }

# ================================================================= nginx instances

package Intermission::Test::Instance;

# An extra nginx started by start_instance(). Methods:
#   name, prefix, pid, conf, port($name = 'PORT') (e.g. port('CTL_PORT')), ctl_port
#   ctl(...), ctl_status(...), scope_status($scope), ctl_send(...): like the functions of
#     the same name, with port => this instance's CTL_PORT
#   worker_pids(%opt), error_log_lines([qr//]), error_log_tail([$n]), file_lines($name)
#   stop(%opt) (like stop_nginx), start([$template], %opt) (again, same ports), running

use strict;
use warnings;

sub name    { $_[0]{name} }
sub prefix  { $_[0]{prefix} }
sub pid     { $_[0]{pid} }
sub conf    { $_[0]{conf} }
sub running { $_[0]{pid} ? 1 : 0 }

sub port {
    my ($self, $name) = @_;
    $name //= 'PORT';
    $name .= '_PORT' unless $name =~ /PORT$/;
    return $self->{ports}{$name} //= Intermission::Test::free_port();
}

sub ctl_port { $_[0]->port('CTL_PORT') }

sub ctl {
    my ($self, $method, $cmd, $args, %o) = @_;
    return Intermission::Test::ctl($method, $cmd, $args, port => $self->ctl_port, %o);
}

sub ctl_send {
    my ($self, $method, $cmd, $args, %o) = @_;
    return Intermission::Test::ctl_send($method, $cmd, $args, port => $self->ctl_port, %o);
}

sub ctl_status {
    my ($self, %o) = @_;
    return Intermission::Test::ctl_status(port => $self->ctl_port, %o);
}

sub scope_status {
    my ($self, $name, %o) = @_;
    return Intermission::Test::scope_status($name, port => $self->ctl_port, %o);
}

sub worker_pids {
    my ($self, %o) = @_;
    return Intermission::Test::_worker_pids_of($self, %o);
}

sub file_lines {
    my ($self, $name) = @_;
    return Intermission::Test::file_lines("$self->{prefix}/$name");
}

sub error_log_lines {
    my ($self, $re) = @_;
    return grep { !defined $re || $_ =~ $re } $self->file_lines('error.log');
}

sub error_log_tail {
    my ($self, $n) = @_;
    my @l = $self->file_lines('error.log');
    $n //= 30;
    @l = @l[-$n .. -1] if @l > $n;
    return join("\n", @l);
}

sub stop {
    my ($self, %o) = @_;
    Intermission::Test::_stop_nginx_state($self, %o);
    return $self;
}

sub start {
    my ($self, $tpl, %o) = @_;
    Intermission::Test::_start_nginx_state($self, "start_instance($self->{name})",
                                           $tpl // $self->{template}, %o);
    $self->{template} = $tpl if defined $tpl;
    return $self;
}

1;
