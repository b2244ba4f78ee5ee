#!/usr/bin/perl
# status_page.t: the control endpoint's status page in a real browser: Debian's headless
# Chromium, driven by t/browser/status_page.mjs (playwright-core from npm, `npm ci` in
# t/browser), against this nginx. The script's own checks become this file's tests:
# - every scope has its card: default, billing (running), api (down: its backend never
#   answers, intermission_on_failure hold), with the reason;
# - GET /ctl/ answers the page with its CSP (nothing but its own hashed script and style,
#   fetches to its origin), and under that policy the script runs and the style applies;
# - a blocker whose path has <script> and <img onerror> in it shows as that text: no
#   element, script, dialog or CSP violation comes from it;
# - loading and polling sends only GETs and changes nothing;
# - Pause sends intermissionctl's POST pause?scope=default&auto_resume=15m; the page shows
#   the scope paused and the countdown; 3 requests held show as held 3 without a reload,
#   with the oldest one's age and the graph's peak; a screenshot is saved;
# - Resume releases them (each answered 200) and the page says how many;
# - a browser's GET of pause is a 405 and pauses nothing;
# - another site's page (evil.test, mapped to 127.0.0.1 for the browser) POSTs to pause by
#   a form and by a no-cors fetch: both are 403s, nothing paused;
# - behind auth_basic, with the browser given the credentials, the page reads status and
#   its Pause and Resume all work.
# Then, from here: the held requests reached the backend once each, the counters agree,
# and the control endpoint's access log has exactly the POSTs the buttons sent as 200s
# and the cross-site ones as 403s.
# Without chromium or node this file skips, saying what to install; with CI=true it fails.
use strict;
use warnings;
use Test::More;
use File::Path qw(make_path);
use Intermission::Test;

my $root = repo_root();
my $dir = "$root/t/browser";
my $chromium = $ENV{CHROMIUM} // '/usr/bin/chromium';
my $ci = ($ENV{CI} // '') eq 'true';

sub missing {
    my ($why) = @_;
    if ($ci) {
        fail("CI=true: the browser test must run, but $why");
        done_testing();
        exit 1;
    }
    plan skip_all => "$why (apt-get install chromium chromium-driver nodejs npm; scripts/install-deps does)";
}

missing("$chromium is not there") unless -x $chromium;
chomp(my $node = `command -v node 2>/dev/null` // '');
chomp(my $npm = `command -v npm 2>/dev/null` // '');
missing('node is not installed') unless $node;
missing('npm is not installed') unless $npm;
{
    my ($major) = (`node --version` // '') =~ /^v(\d+)/;
    missing('node 18 or later is needed (playwright-core 1.60), not ' . ($major // 'unknown')) unless ($major // 0) >= 18;
}
# npm ci only when node_modules is not the lock's (its hidden lockfile is written last).
my $hidden = "$dir/node_modules/.package-lock.json";
if (!-e $hidden || -M $hidden > -M "$dir/package-lock.json") {
    my ($rc, $out, $err) = run_cmd({ timeout => 300 }, 'sh', '-c', 'cd "$1" && npm ci --no-audit --no-fund', 'sh', $dir);
    missing("npm ci in t/browser failed: $err$out") if $rc != 0;
}

write_file('htpasswd', "ops:{PLAIN}s3cret\n");
# Markup that would open a dialog if it ran, within the 56 bytes status keeps of a path.
my $blocker = '/<script>alert(1)</script><img/src=x/onerror=alert(2)>';

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        intermission on;
        proxy_buffering off;
        location / { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
        location /billing/ {
            intermission billing;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        # Nothing listens on DEAD_PORT: the scope "api" goes down on its first request.
        location /api/ {
            intermission api;
            intermission_on_failure hold interval=500ms;
            intermission_max_time 60s;
            proxy_connect_timeout 1s;
            proxy_pass http://127.0.0.1:%%DEAD_PORT%%;
        }
    }
    server {
        listen 127.0.0.1:%%CTL_PORT%%;
        access_log %%PREFIX%%/control.log;
        location /ctl/ { intermission_control; }
    }
    server {
        listen 127.0.0.1:%%AUTH_PORT%%;
        access_log %%PREFIX%%/control.log;
        location /ops/ {
            intermission_control;
            auth_basic "intermission";
            auth_basic_user_file %%PREFIX%%/htpasswd;
        }
    }
    # Another site: a page that makes the visitor's browser POST to the control endpoint.
    server {
        listen 127.0.0.1:%%EVIL_PORT%%;
        default_type text/html;
        location = / {
            return 200 '<!doctype html><title>evil</title><form method="post" action="http://127.0.0.1:%%CTL_PORT%%/ctl/pause?scope=default"></form><script>document.forms[0].submit()</script>';
        }
        location = /fetch { return 200 '<!doctype html><title>evil</title>'; }
    }
}
CONF

my $shots = $ENV{INTERMISSION_SCREENSHOTS} // '/tmp/intermission-ui';
make_path($shots);
my %cfg = (
    chromium => $chromium,
    base => 'http://127.0.0.1:' . port('CTL_PORT') . '/ctl/',
    auth => { base => 'http://127.0.0.1:' . port('AUTH_PORT') . '/ops/', user => 'ops', pass => 's3cret' },
    app => 'http://127.0.0.1:' . port('PORT'),
    evil => 'http://evil.test:' . port('EVIL_PORT') . '/',
    blocker => $blocker,
    shots => $shots,
);
my ($rc, $out, $err) = run_cmd({ timeout => 120 }, $node, "$dir/status_page.mjs", JSON::PP->new->canonical->encode(\%cfg));
my $n = 0;
for my $line (split /\n/, $out) {
    if ($line =~ /^(not )?ok - (.*)$/) { ok(!$1, "browser: $2"); $n++ }
    elsif ($line =~ /^# (.*)$/) { my $m = $1; $m =~ /^screenshot: / ? diag($m) : note($m) }
}
ok($n >= 40, "the browser script ran its checks ($n)");
is($rc, 0, 'the browser script exited 0') or diag("stderr: $err");

# From here: what the buttons did, seen by the backend, the counters and the access log.
my @held = grep { m{^/held/} } map { $_->{uri} } backend_log();
is_deeply([sort @held], ['/held/1', '/held/2', '/held/3'], 'each held request reached the backend once');
my $c = scope_counters('default');
is($c->{held}, 3, 'counters: 3 held');
is($c->{released}, 3, 'counters: 3 released');
is($c->{rejected} + $c->{timed_out} + $c->{aborted}, 0, 'counters: none rejected, timed out or aborted');
ok(!(scope_status('default') // {})->{paused}, 'nothing left paused');
my @posts = map { m{"POST (\S+) HTTP/[\d.]+" (\d+)} ? "$1 $2" : () } file_lines('control.log');
is_deeply(\@posts, [
    '/ctl/pause?scope=default&auto_resume=15m 200', '/ctl/resume?scope=default 200',
    '/ctl/pause?scope=default 403', '/ctl/pause 403',
    '/ops/pause?scope=default 200', '/ops/resume 200',
], "the access log: the buttons' POSTs answered 200, the other site's 403") or diag(join("\n", @posts));

finish();
