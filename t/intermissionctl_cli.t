#!/usr/bin/perl
# intermissionctl_cli.t: the status, pause, resume and drain subcommands of
# scripts/intermissionctl, against two nginx instances (the main one and start_instance).
# - status, human and --json (parses; one entry per endpoint with the module's answer);
#   options before or after the command; --endpoints FILE.
# - pause (--auto-resume) on both: paused, requests held; drain answers at once (held
#   requests are not in flight); resume releases them (json "released") and they are
#   answered 200, recorded once. Pausing a paused endpoint: "already paused", exit 0.
# - drain --timeout and pause --wait-drained --timeout with a request in flight: exit 1;
#   the failed pause resumes what it paused. pause --wait-drained after it: exit 0.
# - A unix-socket endpoint (unix:PATH:/ctl/), basic auth (--user, user:password@ in the
#   URL; a wrong password or none: 401, exit 1), --header (a location that wants a
#   header), an unknown scope (404, exit 1), https (--insecure, --cacert, neither: exit 1;
#   skipped without openssl).
# - Usage errors exit 2; --help exits 0 and documents the endpoint forms; --version prints
#   Cargo.toml's version.
use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Intermission::Test;

write_file('htpasswd', "user:{PLAIN}secret\n");

my $openssl = (grep { -x "$_/openssl" } split /:/, $ENV{PATH} // '/usr/bin')[0];
my $tls = '';
if ($openssl) {
    my $p = prefix();
    my ($rc, $o, $e) = run_cmd("$openssl/openssl", 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
                               '-keyout', "$p/key.pem", '-out', "$p/cert.pem", '-days', '2',
                               '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1');
    if (defined $rc && $rc == 0) {
        $tls = <<'TLS';
server {
        listen 127.0.0.1:%%TLS_PORT%% ssl;
        ssl_certificate %%PREFIX%%/cert.pem;
        ssl_certificate_key %%PREFIX%%/key.pem;
        location /ctl/ {
            intermission_control;
        }
    }
TLS
    } else {
        diag("openssl failed, https skipped: $e");
    }
}
my $conf = <<'CONF';
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    server {
        listen 127.0.0.1:%%CTL_PORT%%;
        listen unix:%%PREFIX%%/ctl.sock;
        location /ctl/ {
            intermission_control;
        }
        location /auth/ {
            intermission_control;
            auth_basic "intermission";
            auth_basic_user_file %%PREFIX%%/htpasswd;
        }
        location /hdr/ {
            intermission_control;
            if ($http_x_token != "s3cret") {
                return 403;
            }
        }
    }
    TLS_SERVER
}
CONF
$conf =~ s/TLS_SERVER/$tls/;
start_nginx($conf);

my $two = start_instance('two', <<'CONF');
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

my $ctl = port('CTL_PORT');
my $E1 = "http://127.0.0.1:$ctl/ctl/";
my $E2 = 'http://127.0.0.1:' . $two->ctl_port . '/ctl/';
my @BOTH = ('--endpoint', $E1, '--endpoint', $E2);
my $SOCK = prefix() . '/ctl.sock';

sub json_of {
    my ($what, $out) = @_;
    my $j = eval { JSON::PP->new->decode($out) };
    ok($j, "$what: --json output parses") or diag("output: $out");
    return $j || {};
}

sub hold {
    my ($port, $path) = @_;
    my $c = http_connect($port);
    $c->send_request(path => $path, keepalive => 0);
    return $c;
}

sub count_uri { my ($uri) = @_; scalar grep { $_->{uri} eq $uri } backend_log() }

sub paused_on {
    my ($st_sub) = @_;
    my $s = $st_sub->();
    return $s && $s->{paused} ? 1 : 0;
}
sub p1 { paused_on(sub { scope_status('default') }) }
sub p2 { paused_on(sub { $two->scope_status('default') }) }

# ---- status
{
    my ($rc, $out, $err) = intermissionctl('status', @BOTH);
    is($rc, 0, 'status: exit 0') or diag($err);
    like($out, qr/^ENDPOINT\s+SCOPE\s+STATE\s+PAUSED FOR\s+HELD\s+IN FLIGHT\s+AUTO-RESUME IN\s+DOWN FOR$/m,
         'status: table header');
    like($out, qr/^\Q$E1\E\s+default\s+running\s/m, 'status: first endpoint, running');
    like($out, qr/^\Q$E2\E\s+default\s+running\s/m, 'status: second endpoint, running');

    ($rc, $out, $err) = intermissionctl(@BOTH, '--json', 'status');
    is($rc, 0, 'status --json, options before the command: exit 0');
    my $j = json_of('status', $out);
    is($j->{command}, 'status', 'status json: command');
    ok($j->{ok}, 'status json: ok');
    is(scalar @{ $j->{endpoints} || [] }, 2, 'status json: two endpoints');
    is_deeply([map { $_->{endpoint} } @{ $j->{endpoints} }], [$E1, $E2], 'status json: endpoint URLs');
    is_deeply([map { $_->{answer}{scopes}[0]{name} } @{ $j->{endpoints} }], ['default', 'default'],
              'status json: the module\'s answer per endpoint');

    my $file = write_file('eps.txt', "# comment\n$E1   # first\n\n$E2\n");
    ($rc, $out) = intermissionctl('status', '--endpoints', $file, '--json');
    is($rc, 0, 'status --endpoints FILE: exit 0');
    $j = json_of('status --endpoints', $out);
    is_deeply([map { $_->{endpoint} } @{ $j->{endpoints} || [] }], [$E1, $E2],
              '--endpoints FILE: both, comments skipped');

    ($rc, undef, $err) = intermissionctl('status', '--endpoint', $E1, '--scope', 'nosuch');
    is($rc, 1, 'status of an unknown scope: exit 1');
    like($err, qr/^intermissionctl: \Q$E1\E: status: HTTP 404 Not Found: /m,
         '... message names endpoint, step, status');
}

# ---- pause, drain, resume on two endpoints
{
    my ($rc, $out, $err) = intermissionctl('pause', @BOTH, '--auto-resume', '1m', '--json');
    is($rc, 0, 'pause: exit 0') or diag($err);
    my $j = json_of('pause', $out);
    ok($j->{ok}, 'pause json: ok');
    is_deeply([map { ($_->{paused} ? 1 : 0) . ($_->{already_paused} ? 1 : 0) } @{ $j->{endpoints} || [] }],
              ['10', '10'],
              'pause json: both paused (not already)');
    ok(p1() && p2(), 'both instances paused');
    my $s = scope_status('default');
    ok($s && defined $s->{auto_resume_in_ms} && $s->{auto_resume_in_ms} > 50_000,
       '--auto-resume 1m passed on')
        or diag explain $s;

    my @c = (hold(port('PORT'), '/cli/held/1'), hold($two->port, '/cli/held/2'));
    ok(wait_held('default', 1) && wait_for(sub { ($two->scope_status('default') // {})->{held} }),
       'a request held on each');

    ($rc, $out) = intermissionctl('status', @BOTH, '--json');
    $j = json_of('status while paused', $out);
    is_deeply([map { $_->{answer}{scopes}[0]{held} } @{ $j->{endpoints} || [] }], [1, 1],
              'status json: held 1 on each');
    ($rc, $out) = intermissionctl('status', @BOTH);
    like($out, qr/^\Q$E1\E\s+default\s+paused\s+\S+s\s+1\s+0\s+\S+s\s+-$/m,
         'status table: paused, held 1, auto-resume');

    ($rc, $out, $err) = intermissionctl('pause', @BOTH);
    is($rc, 0, 'pause again: exit 0');
    like($out, qr/^\Q$E1\E\s+already paused\s/m, 'pause again: "already paused"');

    ($rc, $out, $err) = intermissionctl('drain', @BOTH, '--json', '--timeout', '2s');
    is($rc, 0, 'drain: exit 0 (held requests are not in flight)') or diag($err);
    $j = json_of('drain', $out);
    is_deeply([map { $_->{drained} ? 1 : 0 } @{ $j->{endpoints} || [] }], [1, 1], 'drain json: both drained');

    ($rc, $out, $err) = intermissionctl('resume', @BOTH, '--json');
    is($rc, 0, 'resume: exit 0') or diag($err);
    $j = json_of('resume', $out);
    is_deeply([map { $_->{released} } @{ $j->{endpoints} || [] }], [1, 1], 'resume json: released 1 on each');
    my @r = read_responses(10, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'held requests answered 200');
    is(count_uri('/cli/held/1') + count_uri('/cli/held/2'), 2, '... each recorded once');
    ok(!p1() && !p2(), 'neither paused');
    $_->close for @c;

    ($rc, $out) = intermissionctl('resume', @BOTH);
    is($rc, 0, 'resume when running: exit 0');
    like($out, qr/^\Q$E1\E\s+was not paused\s/m, '... "was not paused"');
}

# ---- drain and pause --wait-drained with a request in flight
{
    my $slow = hold(port('PORT'), '/cli/slow?sleep=2500');
    ok(wait_inflight('default', 1), 'a slow request in flight');
    my ($rc, $out, $err) = intermissionctl('drain', @BOTH, '--timeout', '500ms', '--json');
    is($rc, 1, 'drain --timeout 500ms: exit 1');
    like($err, qr/^intermissionctl: \Q$E1\E: drain: timed out after 0\.5s: 1 request\(s\) still in flight(?:: .*)?$/m,
         '... message');
    my $j = json_of('drain timeout', $out);
    is_deeply([map { $_->{drained} ? 1 : 0 } @{ $j->{endpoints} || [] }], [0, 1],
              'drain json: first not drained, second drained');

    ($rc, $out, $err) = intermissionctl('pause', @BOTH, '--wait-drained', '--timeout', '500ms');
    is($rc, 1, 'pause --wait-drained --timeout 500ms: exit 1');
    like($err, qr/\Q$E1\E: pause: paused, but the drain timed out: 1 request\(s\) still in flight/,
         '... message');
    like($out, qr/^\Q$E1\E\s+resumed again\s/m, '... resumed again');
    ok(!p1() && !p2(), '... neither left paused');
    my ($st) = $slow->read_response(5);
    is($st, 200, 'the slow request answered 200');
    $slow->close;

    ($rc, $out, $err) = intermissionctl('pause', @BOTH, '--wait-drained', '--timeout', '2s');
    is($rc, 0, 'pause --wait-drained when idle: exit 0') or diag($err);
    ok(p1() && p2(), 'both paused');
    ($rc) = intermissionctl('resume', @BOTH);
    is($rc, 0, 'resume');
    ok(!p1() && !p2(), 'neither paused');
}

# ---- unix socket, basic auth, headers
{
    my $U = "unix:$SOCK:/ctl/";
    my ($rc, $out, $err) = intermissionctl('status', '--endpoint', $U, '--json');
    is($rc, 0, 'unix socket: status exit 0') or diag($err);
    my $j = json_of('unix', $out);
    is($j->{endpoints}[0]{answer}{scopes}[0]{name}, 'default', 'unix socket: the module answered');
    ($rc) = intermissionctl('pause', '--endpoint', $U);
    is($rc, 0, 'unix socket: pause');
    ok(p1(), '... paused');
    ($rc, $out) = intermissionctl('resume', '--endpoint', $U);
    is($rc, 0, 'unix socket: resume');
    ok(!p1(), '... resumed');
    ($rc, undef, $err) = intermissionctl('status', '--endpoint', 'unix:' . prefix() . '/nosuch.sock:/ctl/');
    is($rc, 1, 'missing unix socket: exit 1');
    like($err, qr/status: no such socket/, '... message');

    my $A = "http://127.0.0.1:$ctl/auth/";
    ($rc, undef, $err) = intermissionctl('status', '--endpoint', $A);
    is($rc, 1, 'auth_basic without --user: exit 1');
    like($err, qr/\Q$A\E: status: HTTP 401 Unauthorized/, '... 401');
    ($rc, undef, $err) = intermissionctl('status', '--endpoint', $A, '--user', 'user:wrong');
    is($rc, 1, 'wrong password: exit 1');
    ($rc, $out, $err) = intermissionctl('pause', '--endpoint', $A, '--user', 'user:secret');
    is($rc, 0, '--user user:secret: pause exit 0') or diag($err);
    ok(p1(), '... paused');
    ($rc) = intermissionctl('resume', '--endpoint', "http://user:secret\@127.0.0.1:$ctl/auth/");
    is($rc, 0, 'user:password@ in the URL: resume exit 0');
    ok(!p1(), '... resumed');

    my $H = "http://127.0.0.1:$ctl/hdr/";
    ($rc, undef, $err) = intermissionctl('status', '--endpoint', $H);
    is($rc, 1, 'without the header: exit 1');
    like($err, qr/HTTP 403/, '... 403');
    ($rc, undef, $err) = intermissionctl('status', '--endpoint', $H, '--header', 'X-Token: s3cret');
    is($rc, 0, "--header 'X-Token: s3cret': exit 0") or diag($err);
}

# ---- https
SKIP: {
    skip 'no openssl: https not tested', 7 unless $tls;
    my $T = 'https://127.0.0.1:' . port('TLS_PORT') . '/ctl/';
    my ($rc, undef, $err) = intermissionctl('status', '--endpoint', $T);
    is($rc, 1, 'https, self-signed, no --cacert: exit 1');
    like($err, qr/certificate/i, '... the message says why');
    ($rc, undef, $err) = intermissionctl('status', '--endpoint', $T, '--insecure');
    is($rc, 0, 'https --insecure: exit 0') or diag($err);
    ($rc, undef, $err) = intermissionctl('status', '--endpoint', $T, '--cacert', prefix() . '/cert.pem');
    is($rc, 0, 'https --cacert: exit 0') or diag($err);
    ($rc) = intermissionctl('pause', '--endpoint', $T, '--insecure');
    is($rc, 0, 'https: pause');
    ok(p1(), '... paused');
    ($rc) = intermissionctl('resume', '--endpoint', $T, '-k');
    ok($rc == 0 && !p1(), 'https: resume');
}

# ---- usage
{
    my ($rc, $out) = intermissionctl('--help');
    is($rc, 0, '--help: exit 0');
    like($out, qr/unix:\/run\/nginx-ctl\.sock:\/intermission\//, '--help documents unix: endpoints');
    like($out, qr/exit status:/, '--help documents the exit status');
    ($rc, $out) = intermissionctl('run', '--help');
    is($rc, 0, 'run --help: exit 0');
    like($out, qr/--auto-resume.*longer than the whole maintenance/s, 'run --help documents --auto-resume');
    # The version it prints is the one the module and the packages are built as.
    my ($version) = read_file_text(repo_root() . '/Cargo.toml') =~ /^\[package\].*?^version\s*=\s*"([^"]+)"/ms;
    ($rc, $out) = intermissionctl('--version');
    is($rc, 0, '--version: exit 0');
    is($out =~ s/\s+\z//r, "intermissionctl $version", "--version: Cargo.toml's version ($version)");

    my @usage = (
        ['no endpoint', 'status'],
        ['no command', '--endpoint', $E1],
        ['unknown command', '--endpoint', $E1, 'frobnicate'],
        ['unknown option', 'status', '--endpoint', $E1, '--frob'],
        ['bad duration', 'pause', '--endpoint', $E1, '--auto-resume', '10x'],
        ['duration over 24h', 'pause', '--endpoint', $E1, '--auto-resume', '25h'],
        ['--timeout without --wait-drained', 'pause', '--endpoint', $E1, '--timeout', '1s'],
        ['bad scheme', 'status', '--endpoint', 'ftp://127.0.0.1/ctl/'],
        ['bad scope', 'status', '--endpoint', $E1, '--scope', 'a b'],
        ['bad header', 'status', '--endpoint', $E1, '--header', 'novalue'],
        ['run without --', 'run', '--endpoint', $E1, 'true'],
        ['run with nothing after --', 'run', '--endpoint', $E1, '--'],
        ['missing endpoints file', 'status', '--endpoints', prefix() . '/nosuch.txt'],
    );
    for my $u (@usage) {
        my ($what, @args) = @$u;
        my ($urc, undef, $uerr) = intermissionctl(@args);
        is($urc, 2, "usage error ($what): exit 2");
        like($uerr, qr/intermissionctl/, "usage error ($what): a message on stderr");
    }
    ok(!p1() && !p2(), 'nothing paused at the end');
}

finish();
