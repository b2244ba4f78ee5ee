#!/usr/bin/perl
# package.t: the Debian packages (scripts/package), installed on this machine with apt-get,
# as an operator would:
# 1. scripts/package builds libnginx-mod-http-intermission_<Cargo.toml's version>-1_amd64.deb
#    and intermissionctl_..._all.deb; the module's Depends names the nginx-abi-* that the
#    installed nginx provides; lintian finds no error; both manual pages render without a
#    warning.
# 2. apt-get install ./...deb: the files are where Debian's module packages put theirs, the
#    module is enabled by a link in /etc/nginx/modules-enabled/, the state directory is
#    www-data's with mode 0700; `nginx -t` passes for the system's nginx.conf and for the
#    example debian/intermission.conf (without the link's include, that example fails).
# 3. Debian's nginx binary, with a configuration that loads modules the Debian way (include
#    /etc/nginx/modules-enabled/*.conf), workers as www-data and a state file in the
#    package's directory: the installed /usr/bin/intermissionctl pauses, a request is held,
#    the state file is written (www-data, 0600), the resume releases it and it is answered
#    200 by the backend.
# 4. apt-get remove: the link, the module and intermissionctl are gone, the state directory
#    is kept, nginx -t passes and nginx starts with the same modules-enabled include.
# 5. apt-get purge: every file and link the packages had is gone, the state directory too,
#    dpkg knows neither package; nginx -t passes and nginx starts.
# It runs as root on Debian, with Debian's nginx (not under TEST_NGINX_BINARY's other nginx),
# and skips otherwise (in CI, CI=true, it fails instead). Whatever happens, it purges the
# packages it installed, and it starts no nginx but its own (the harness's, on free ports).
use strict;
use warnings;
use Test::More;
use Fcntl qw(:flock);
use File::Basename qw(basename);
use Intermission::Test;

my $LOCK;
my @PKGS = qw(libnginx-mod-http-intermission intermissionctl);
my $LINK = '/etc/nginx/modules-enabled/50-mod-http-intermission.conf';
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-intermission.conf';
my $SO = '/usr/lib/nginx/modules/ngx_http_intermission_module.so';
my $STATEDIR = '/var/lib/nginx/intermission';
my $CTL = '/usr/bin/intermissionctl';
my $EXAMPLE = '/usr/share/doc/libnginx-mod-http-intermission/examples/debian/intermission.conf';
my $ROOT = repo_root();

sub status_of {
    my ($pkg) = @_;
    my $s = `dpkg-query -W -f '\${db:Status-Status}' $pkg 2>/dev/null`;
    return length $s ? $s : 'not-installed';
}

{
    my $why;
    my $bin = $ENV{TEST_NGINX_BINARY};
    if (defined $bin && $bin ne '/usr/sbin/nginx') {
        # Not a reason to fail in CI: the run against Debian's nginx ran this file.
        plan skip_all => "the package is for Debian's nginx; this run tests $bin";
    }
    $why = 'needs root (apt-get install)' if $> != 0;
    $why //= 'needs Debian (dpkg, apt-get)'
        unless -f '/etc/debian_version' && -x '/usr/bin/dpkg' && -x '/usr/bin/apt-get';
    $why //= "needs Debian's nginx (/usr/sbin/nginx)" unless -x '/usr/sbin/nginx';
    if (!defined $why) {
        # One package test at a time on a machine (other checkouts run theirs too): they
        # install and remove the same system packages.
        open($LOCK, '>', '/run/lock/nginx-intermission-package-test.lock') or die "lock: $!";
        my $deadline = time + 240;    # under the harness's 300 s alarm
        until (flock($LOCK, LOCK_EX | LOCK_NB)) {
            die "another package test holds /run/lock/nginx-intermission-package-test.lock\n"
                if time > $deadline;
            sleep 1;
        }
        my @there = grep { status_of($_) ne 'not-installed' } @PKGS;
        $why = "@there already installed here: the test would remove it" if @there;
        $why //= "$STATEDIR exists and belongs to no package: the test would remove it"
            if -e $STATEDIR;
    }
    if (defined $why) {
        if (($ENV{CI} // '') eq 'true') {
            plan tests => 1;
            fail("CI must run the package test, but: $why");
            exit 1;
        }
        plan skip_all => $why;
    }
}

alarm(900 * slow());          # a package build, lintian and four apt-get runs

my %installed;                # the packages this file installed, for the cleanup
sub apt {
    my (@args) = @_;
    my ($rc, $out, $err) = run_cmd({ timeout => 600, env => { DEBIAN_FRONTEND => 'noninteractive' } },
        'apt-get', '-y', '-q', '-o', 'DPkg::Lock::Timeout=300', @args);
    diag("apt-get @args: exit " . ($rc // 'timeout') . "\n$out$err") if !defined $rc || $rc != 0;
    return $rc // -1;
}

sub purge_all {
    my @left = grep { status_of($_) ne 'not-installed' } keys %installed;
    return unless @left;
    apt('purge', @left);
    delete $installed{$_} for grep { status_of($_) eq 'not-installed' } @left;
}

# `nginx -t` of the system's nginx.conf gives its temporary directories (/var/lib/nginx/body,
# ...) to its user, as any start of Debian's nginx does; they get their owners back at the end.
my %OWNERS = map { my @s = lstat $_; ($_ => [@s[4, 5]]) } grep { $_ ne $STATEDIR } glob('/var/lib/nginx/*');

END {
    # The harness's own END stops nginx too, but after this one: stop it before the purge.
    my $rc = $?;
    eval { stop_nginx() };
    eval { purge_all() };
    for my $d (keys %OWNERS) {
        my @s = lstat $d or next;
        chown @{ $OWNERS{$d} }, $d if $s[4] != $OWNERS{$d}[0] || $s[5] != $OWNERS{$d}[1];
    }
    $? = $rc;
}

# nginx -t with the system's prefix (modules/ is /usr/share/nginx/modules, which Debian links
# to /usr/lib/nginx/modules): -> (exit code, output)
sub system_nginx_t {
    my (@conf) = @_;
    my ($rc, $out, $err) = run_cmd('/usr/sbin/nginx', '-t', @conf);
    return ($rc, "$out$err");
}

# a test configuration that loads the modules the Debian way and includes $http inside http {};
# its temporary directories are the test's, so that nginx -t leaves /var/lib/nginx's alone
sub debian_conf {
    my ($name, $http) = @_;
    my $p = prefix();
    my $temp = join "\n    ", map { "${_}_temp_path $p/${_}_temp;" } qw(client_body proxy fastcgi uwsgi scgi);
    return write_file($name, <<"CONF");
include /etc/nginx/modules-enabled/*.conf;
user www-data;
pid $p/$name.pid;
error_log $p/$name-error.log;
events {}
http {
    access_log off;
    $temp
    $http
}
CONF
}

# ---- 1. build
my ($version) = read_file_text("$ROOT/Cargo.toml") =~ /^\[package\].*?^version\s*=\s*"([^"]+)"/ms;
ok($version, "Cargo.toml's version: " . ($version // 'none'));
my $out = prefix() . '/debs';
my ($rc, $o, $e) = run_cmd({ timeout => 900 }, "$ROOT/scripts/package", $out);
is($rc, 0, 'scripts/package builds') or diag("$o$e");
my $arch = `dpkg --print-architecture` =~ s/\s+$//r;
my $deb = "$out/libnginx-mod-http-intermission_$version-1_$arch.deb";
my $ctldeb = "$out/intermissionctl_$version-1_all.deb";
ok(-f $deb, basename($deb) . ' built');
ok(-f $ctldeb, basename($ctldeb) . ' built');

my %f = map { my $v = `dpkg-deb -f $deb $_`; chomp $v; ($_ => $v) }
    qw(Package Version Architecture Depends Section Priority Maintainer Installed-Size Description);
my ($abi) = `dpkg-query -W -f '\${Provides}' nginx` =~ /\b(nginx-abi-[\w.~+-]+)/;
ok($abi, "the installed nginx provides " . ($abi // 'no nginx-abi-*'));
like($f{Depends}, qr/(?:^|,\s*)\Q$abi\E(?:,|$)/, "Depends: $abi") if $abi;
like($f{Depends}, qr/\blibc6 \(>= [\d.]+\)/, 'Depends: libc6 (from dpkg-shlibdeps)');
is($f{Version}, "$version-1", 'Version');
is($f{Architecture}, $arch, "Architecture: $arch");
is($f{Section}, 'httpd', 'Section: httpd');
is($f{Priority}, 'optional', 'Priority: optional');
like($f{Maintainer}, qr/^.+ <[^>]+\@[^>]+>$/, 'Maintainer');
like($f{'Installed-Size'}, qr/^\d+$/, 'Installed-Size');
my $so_kib = do { my $x = `dpkg-deb --fsys-tarfile $deb | tar -tvf - ./usr/lib/nginx/modules/ngx_http_intermission_module.so`;
                  my ($s) = $x =~ /^\S+\s+\S+\s+(\d+)/; ($s // 0) / 1024 };
cmp_ok($f{'Installed-Size'}, '>=', $so_kib, "Installed-Size ($f{'Installed-Size'} KiB) counts the module ($so_kib KiB)");
is(`dpkg-deb -f $ctldeb Depends` =~ s/\s+$//r, 'python3', 'intermissionctl: Depends: python3, no nginx');

# lintian and man(1): scripts/test installs them before any test (scripts/package --deps);
# scripts/package, run above, installed them too if they were missing.
ok(-x '/usr/bin/lintian' && -x '/usr/bin/man', 'lintian and man are installed');
($rc, $o, $e) = run_cmd({ timeout => 300 }, 'lintian', '--pedantic', '-I', $deb, $ctldeb);
my @errors = grep { /^E: / } split /\n/, $o . $e;
ok(defined $rc && !@errors, 'lintian: no error') or diag("$o$e");
note("lintian:\n$o$e");

for my $man ("$ROOT/man/intermissionctl.1", "$ROOT/man/ngx_http_intermission_module.5") {
    ($rc, $o, $e) = run_cmd({ env => { LC_ALL => 'C.UTF-8', MANROFFSEQ => '', MANWIDTH => 80 } },
                            'man', '--warnings', '-E', 'UTF-8', '-l', $man);
    is($rc, 0, basename($man) . ' renders');
    is($e, '', basename($man) . ': no warning') or diag($e);
    like($o, qr/^SYNOPSIS$/m, basename($man) . ': has a SYNOPSIS');
}

# ---- 2. install
is(apt('install', $deb, $ctldeb), 0, 'apt-get install ./both.deb');
$installed{$_} = 1 for @PKGS;
is(status_of($_), 'installed', "$_ is installed") for @PKGS;
my @files = map { my $p = $_; grep { length } split /\n/, `dpkg -L $p` } @PKGS;
ok(@files > 10, scalar(@files) . ' paths in dpkg -L');

ok(-f $SO && !-l $SO, "$SO");
is((stat $SO)[2] & 07777, 0644, 'the module is 0644');
ok(-f $AVAILABLE, $AVAILABLE);
like(read_file_text($AVAILABLE), qr/^load_module modules\/ngx_http_intermission_module\.so;$/m,
     'it loads modules/ngx_http_intermission_module.so');
ok(-l $LINK, "$LINK is a link");
is(readlink($LINK), $AVAILABLE, "... to $AVAILABLE");
ok(-x $CTL, "$CTL is executable");
like(read_file_text($CTL), qr{\A#!/usr/bin/python3\n}, 'intermissionctl: #!/usr/bin/python3');
for my $f ('/usr/share/man/man1/intermissionctl.1.gz', '/usr/share/man/man5/ngx_http_intermission_module.5.gz',
           map({ ("/usr/share/doc/$_/copyright", "/usr/share/doc/$_/changelog.Debian.gz") } @PKGS), $EXAMPLE) {
    ok(-f $f, $f);
}
like(read_file_text('/usr/share/doc/libnginx-mod-http-intermission/copyright'),
     qr{^Format: https://www\.debian\.org/doc/packaging-manuals/copyright-format/1\.0/$}m,
     'copyright: machine-readable');
($rc, $o, $e) = run_cmd('dpkg', '--verify', @PKGS);
is($rc, 0, 'dpkg --verify: the installed files match md5sums') or diag("$o$e");
($rc, $o, $e) = run_cmd({ env => { LC_ALL => 'C.UTF-8', MANWIDTH => 80 } }, 'man', '--warnings', '-E', 'UTF-8', '1', 'intermissionctl');
like($o, qr/intermissionctl\s+-\s+pause,\s+drain\s+and\s+resume/, 'man intermissionctl');
is($e, '', '... without a warning');
($rc, $o, $e) = run_cmd({ env => { LC_ALL => 'C.UTF-8', MANWIDTH => 80 } }, 'man', '--warnings', '-E', 'UTF-8', '5', 'ngx_http_intermission_module');
like($o, qr/intermission_state_file/, 'man 5 ngx_http_intermission_module');
is($e, '', '... without a warning');

my @st = stat $STATEDIR;
ok(-d _, "$STATEDIR exists");
is(getpwuid($st[4] // -1) // '', 'www-data', '... owned by www-data');
is(getgrgid($st[5] // -1) // '', 'www-data', '... group www-data');
is(($st[2] // 0) & 07777, 0700, '... mode 0700');

($rc, $o) = system_nginx_t();
is($rc, 0, 'nginx -t: the system nginx.conf, with the module enabled') or diag($o);
my $t = debian_conf('example.conf', "include $EXAMPLE;");
($rc, $o) = system_nginx_t('-c', $t);
is($rc, 0, 'nginx -t: the example debian/intermission.conf, the module from modules-enabled') or diag($o);
my $bare = write_file('bare.conf', read_file_text($t) =~ s{^include /etc/nginx/modules-enabled/\S+\n}{}mr);
($rc, $o) = system_nginx_t('-c', $bare);
like($o, qr/unknown directive "intermission"/, '... and without the modules-enabled include it fails');

# ---- 3. a pause and a resume with the installed module and intermissionctl
# modules/ relative to the harness's prefix, as /usr/share/nginx/modules is for Debian's
symlink('/usr/lib/nginx/modules', prefix() . '/modules') or die "symlink: $!";
my $CONF = <<'CONF';
user www-data;
include /etc/nginx/modules-enabled/*.conf;
worker_processes 2;
events { worker_connections 1024; }
http {
    intermission_state_file /var/lib/nginx/intermission/state;
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
start_nginx($CONF, no_module => 1);
my $port = port('PORT');
my $E = 'http://127.0.0.1:' . port('CTL_PORT') . '/ctl/';
like(read_file_text('nginx.conf'), qr/\A(?!.*^load_module)/ms, 'the test nginx has no load_module line of its own');
my @w = worker_pids();
is(scalar(grep { (stat "/proc/$_")[4] == getpwnam('www-data') } @w), 2, 'its 2 workers run as www-data');
my ($st) = http_get($port, '/before');
is($st, 200, 'not paused: answered');

($rc, $o, $e) = run_cmd($CTL, 'pause', '--endpoint', $E, '--auto-resume', '5m');
is($rc, 0, 'intermissionctl pause') or diag("$o$e");
ok(scope_status('default')->{paused}, 'the scope is paused');
my $c = send_only($port, '/held');
ok(wait_held('default', 1), 'a request is held');
ok(none_readable(0.3, $c), '... and not answered');
my $state = "$STATEDIR/state";
my @fs = stat $state;
ok(@fs, 'the state file is written') or diag(`ls -la $STATEDIR; tail -5 ${\ prefix()}/error.log`);
is(getpwuid($fs[4] // -1) // '', 'www-data', '... by www-data');
is(($fs[2] // 0) & 07777, 0600, '... mode 0600');
like(read_file_text($state) // '', qr/^paused default /m, '... with the pause');

($rc, $o, $e) = run_cmd($CTL, 'resume', '--endpoint', $E, '--json');
is($rc, 0, 'intermissionctl resume') or diag("$o$e");
my $j = json_ok('intermissionctl resume', $o);
is($j->{endpoints} && $j->{endpoints}[0]{released}, 1, '... released 1 held request') or diag($o);
my ($r) = read_responses(5, $c);
is($r && $r->[0], 200, 'the held request is answered 200');
is($r && $r->[2], 'ok /held', '... by the backend');
is(scalar(grep { $_->{uri} eq '/held' } backend_log()), 1, 'the backend got it once');
($rc, $o, $e) = run_cmd($CTL, 'status', '--endpoint', $E, '--json');
$j = json_ok('intermissionctl status', $o);
my @scopes = map { @{ ($_->{answer} || {})->{scopes} || [] } } @{ $j->{endpoints} || [] };
ok(@scopes && !grep({ $_->{paused} } @scopes), 'intermissionctl status: scope default, not paused')
    or diag($o);
unlike(read_file_text($state) // '', qr/^paused /m, 'the state file has no pause left');
stop_nginx();

# an upgrade (here: a reinstall of the same version) keeps the link and the state
is(apt('install', '--reinstall', $deb), 0, 'apt-get install --reinstall');
is(readlink($LINK) // '', $AVAILABLE, '... the link is kept');
ok(-f $state, '... and the state file');

# ---- 4. remove
my $plain = <<'CONF';
include /etc/nginx/modules-enabled/*.conf;
events { worker_connections 1024; }
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { return 200 "plain\n"; }
    }
}
CONF
is(apt('remove', @PKGS), 0, 'apt-get remove');
is(status_of('libnginx-mod-http-intermission'), 'config-files', 'the module package: config-files (purge left)');
ok(!-e $LINK && !-l $LINK, "$LINK is gone");
ok(-l "$LINK.removed", '... set aside as .removed, as Debian\'s module packages do (nginx does not include it)');
ok(!-e $SO, "$SO is gone");
ok(!-e $AVAILABLE, "$AVAILABLE is gone");
ok(!-e $CTL, "$CTL is gone");
ok(-d $STATEDIR, "$STATEDIR is kept until the purge");
($rc, $o) = system_nginx_t();
is($rc, 0, 'nginx -t: the system nginx.conf') or diag($o);
ok(eval { start_nginx($plain, no_module => 1); 1 }, 'nginx starts with the modules-enabled include') or diag($@);
($st) = http_get($port, '/');
is($st, 200, '... and answers');
stop_nginx();

# ---- 5. purge
is(apt('purge', @PKGS), 0, 'apt-get purge');
is(status_of($_), 'not-installed', "dpkg: $_ not installed") for @PKGS;
delete $installed{$_} for @PKGS;
my @left;
for my $f (grep { $_ ne '/.' } @files) {
    next unless -e $f || -l $f;
    # a directory others still own (/usr/lib/nginx/modules: nginx's) stays
    next if -d $f && !-l $f && system("dpkg -S '$f' >/dev/null 2>&1") == 0;
    push @left, $f;
}
ok(!@left, 'every path the packages had is gone') or diag("left: @left");
ok(!-e $LINK && !-l $LINK && !-l "$LINK.removed", 'the modules-enabled link and .removed are gone');
ok(!-e $STATEDIR, "$STATEDIR is gone");
($rc, $o) = system_nginx_t();
is($rc, 0, 'nginx -t: the system nginx.conf') or diag($o);
ok(eval { start_nginx($plain, no_module => 1); 1 }, 'nginx starts') or diag($@);
($st) = http_get($port, '/');
is($st, 200, '... and answers');

finish();
