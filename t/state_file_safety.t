#!/usr/bin/perl
# state_file_safety.t: the state file (intermission_state_file) is private, checked,
# durable, and a failure to write it is loud.
# 1. nginx creates it mode 0600 (a pause writes it; a resume rewrites it, still 0600).
# 2. At start, a file that pauses "default" but that group or others may write (0666,
#    0620), or that another user owns (0600, 65534:65534), is refused: nginx starts
#    unpaused and logs an [error] (or worse) line naming the state file and why
#    ("writable", "owned by").
# 3. While nginx runs, such a file (0666) renamed into place is not followed: the scope is
#    not paused (the workers look at the file every 100 ms; the test waits 1 s), and an
#    [error] (or worse) line about the state file is logged.
# 4. `nginx -t` checks that the workers' user (`user nobody nogroup;`) can write the
#    file's directory: a root-owned 0755 directory fails, naming the directive and "not
#    writable"; the directory owned by nobody (0700) passes. Only as root.
# 5. A change that cannot be written (the file's directory replaced by a regular file:
#    ENOTDIR, even for root) answers 500 with "persisted": false and an error about the
#    state file, logs an [error] (or worse) line, and status tells the truth (the zone
#    changed). intermissionctl pause exits non-zero and says why. Once the directory is
#    back, a pause answers 200 with "persisted": true.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

# the fixed module may log state-file problems at crit or alert (the brief accepts error
# or worse)
allow_alerts(qr/intermission: .*state file/);

my $p = prefix();
my $port = port('PORT');
my $CONF = <<'CONF';
http {
    intermission_state_file %%STATE%%;
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

my $state = "$p/intermission.state";
set_var(STATE => $state);
my $PAUSING = "ngx_http_intermission_module state 1\npaused default "
            . int(time * 1000 - 5000) . " -\n";
my $ERR_RE = qr/\[(?:error|crit|alert|emerg)\]/;

sub mode_of { my @s = stat $_[0]; @s ? $s[2] & 07777 : undef }
sub spit {
    my ($path, $text, $mode) = @_;
    open(my $fh, '>', $path) or die "$path: $!";
    print $fh $text;
    close $fh or die "$path: $!";
    chmod $mode, $path or die "chmod $path: $!" if defined $mode;
}
# error-log lines after mark() that match every pattern given
my $mark = 0;
sub mark { $mark = scalar(error_log_lines()) }
sub new_lines {
    my (@re) = @_;
    my @l = error_log_lines();
    @l = @l[$mark .. $#l];
    return grep { my $l = $_; !grep { $l !~ $_ } @re } @l;
}
sub paused { my $s = scope_status('default'); $s ? ($s->{paused} ? 1 : 0) : undef }

# ---------------------------------------------------------------- 1. mode 0600
start_nginx($CONF);
is(scalar ctl('POST', 'pause'), 200, '1: paused');
ok(-e $state, '1: the pause wrote the state file');
is(sprintf('%04o', mode_of($state) // 0), '0600', '1: the state file is created mode 0600');
is(scalar ctl('POST', 'resume'), 200, '1: resumed');
is(sprintf('%04o', mode_of($state) // 0), '0600', '1: rewritten by the resume, still mode 0600');
stop_nginx();

# ---------------------------------------------------------------- 2. refused at start
for my $case ([ '0666', 0666, undef, qr/writable/ ],
              [ '0620', 0620, undef, qr/writable/ ],
              [ 'owned by 65534', 0600, 65534, qr/owned by/ ]) {
    my ($name, $mode, $owner, $why) = @$case;
    unlink $state;
    spit($state, $PAUSING, $mode);
    if (defined $owner) {
        if ($> != 0) { SKIP: { skip "2: $name: chown needs root", 3 } next }
        chown $owner, $owner, $state or die "chown $state: $!";
    }
    mark();
    start_nginx($CONF);
    is(paused(), 0, "2: a state file $name that pauses default: nginx starts unpaused");
    my @l = new_lines($ERR_RE, qr/state file/, $why);
    ok(scalar @l, "2: $name: an [error]-or-worse line names the state file and says $why")
        or diag(join "\n", new_lines(qr/state file/));
    my ($st) = http_get($port, '/refused', timeout => 3);
    is($st, 200, "2: $name: a request passes");
    stop_nginx();
}

# ---------------------------------------------------------------- 3. not followed while running
unlink $state;
start_nginx($CONF);
is(scalar ctl('POST', 'pause'), 200, '3: paused (the file is written)');
is(scalar ctl('POST', 'resume'), 200, '3: resumed');
is(paused(), 0, '3: running unpaused');
mark();
spit("$state.new", $PAUSING, 0666);
rename "$state.new", $state or die "rename: $!";
sleep 1;
is(paused(), 0, '3: a 0666 state file renamed into place does not pause the scope');
my @l3 = new_lines($ERR_RE, qr/state file/);
ok(scalar @l3, '3: an [error]-or-worse line about the state file is logged')
    or diag(join "\n", new_lines(qr/intermission/));
my ($st3) = http_get($port, '/after-replace', timeout => 3);
is($st3, 200, '3: a request passes');
stop_nginx();
unlink $state;

# ---------------------------------------------------------------- 4. nginx -t: the directory
SKIP: {
    skip 'needs root (user nobody, chown)', 4 unless $> == 0;
    my $dir = "$p/sdir";
    mkdir $dir or die "mkdir $dir: $!";
    chown 0, 0, $dir;
    chmod 0755, $dir;
    my $tpl = "user nobody nogroup;\n" . $CONF;
    $tpl =~ s/%%STATE%%/$dir\/state/;
    my ($rc, $out) = nginx_t($tpl);
    isnt($rc, 0, '4: nginx -t fails: the state file\'s directory (root, 0755) is not writable by user nobody');
    like($out, qr/intermission_state_file/, '4: ... the message names intermission_state_file')
        or diag($out);
    like($out, qr/not writable/, '4: ... and says "not writable"') or diag($out);
    chown 65534, 65534, $dir or die "chown $dir: $!";
    chmod 0700, $dir;
    ($rc, $out) = nginx_t($tpl);
    is($rc, 0, '4: nginx -t passes once the directory is nobody\'s (0700)') or diag($out);
}

# ---------------------------------------------------------------- 5. a write that fails
my $sd = "$p/sd";
mkdir $sd or die "mkdir $sd: $!";
set_var(STATE => "$sd/state");
start_nginx($CONF);
is(paused(), 0, '5: started unpaused');
rename $sd, "$sd.gone" or die "rename: $!";
spit($sd, "not a directory\n");

mark();
my ($st, undef, $j, $raw) = ctl('POST', 'pause');
is($st, 500, '5: pause while the state file cannot be written: 500') or diag($raw);
ok($j && exists $j->{persisted} && defined $j->{persisted} && !$j->{persisted},
   '5: ... with "persisted": false') or diag($raw);
like($j && $j->{error} // '', qr/state file/, '5: ... and an "error" about the state file')
    or diag($raw);
ok(scalar(new_lines($ERR_RE, qr/state file/)), '5: an [error]-or-worse line names the state file')
    or diag(join "\n", new_lines(qr/intermission/));
is(paused(), 1, '5: status: the scope is paused (the zone changed, and the answer says so)');
ok($j && $j->{scopes} && $j->{scopes}[0] && $j->{scopes}[0]{paused},
   '5: the pause answer shows the scope paused') or diag($raw);

mark();
($st, undef, $j, $raw) = ctl('POST', 'resume');
is($st, 500, '5: resume while the state file cannot be written: 500') or diag($raw);
ok($j && exists $j->{persisted} && defined $j->{persisted} && !$j->{persisted},
   '5: ... with "persisted": false') or diag($raw);
like($j && $j->{error} // '', qr/state file/, '5: ... and an "error" about the state file')
    or diag($raw);
ok(scalar(new_lines($ERR_RE, qr/state file/)), '5: resume: an [error]-or-worse line names the state file');
is(paused(), 0, '5: status: the scope is resumed');

{
    my ($rc, $out, $err) = intermissionctl('--endpoint', "http://127.0.0.1:" . port('CTL_PORT') . "/ctl/",
                                           'pause');
    ok(defined $rc && $rc != 0, '5: intermissionctl pause exits non-zero while the state file cannot be written')
        or diag("exit " . ($rc // 'undef') . "\nstdout: $out\nstderr: $err");
    like("$out\n$err", qr/state file/, '5: ... and says it is about the state file')
        or diag("stdout: $out\nstderr: $err");
    ctl('POST', 'resume');    # whatever it did
}

unlink $sd or die "unlink $sd: $!";
rename "$sd.gone", $sd or die "rename back: $!";
($st, undef, $j, $raw) = ctl('POST', 'pause');
is($st, 200, '5: the directory is back: pause answers 200') or diag($raw);
ok($j && $j->{persisted}, '5: ... with "persisted": true') or diag($raw);
like(read_file_text("$sd/state") // '', qr/^paused default /m, '5: the state file records the pause');
($st, undef, $j, $raw) = ctl('POST', 'resume');
is($st, 200, '5: resume answers 200') or diag($raw);

finish();
