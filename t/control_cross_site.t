#!/usr/bin/perl
# control_cross_site.t: pause and resume refuse a browser's request made for another site,
# and the status page is served with its safety headers. No browser needed (status_page.t
# does the same from a real one).
# - A POST pause or resume with `Sec-Fetch-Site` other than same-origin/none, or else with
#   an `Origin` that is not the Host's (another host, another port, `null`), is a 403 JSON
#   error, logged, and changes nothing: a running scope stays running, a paused one stays
#   paused and keeps its held request, which a same-origin resume then releases (200).
# - A request with neither header (curl, intermissionctl) and one with the page's own
#   headers (`Sec-Fetch-Site: same-origin`, `Origin` = Host) pause and resume as before.
# - Behind auth_basic: a cross-site request with valid credentials is still refused (403),
#   one without credentials gets auth_basic's 401 first, intermissionctl --user works.
# - GET <endpoint>/ and GET <endpoint>/ui answer the page: text/html; charset=utf-8,
#   Cache-Control: no-store, X-Content-Type-Options: nosniff, X-Frame-Options: DENY,
#   Referrer-Policy: no-referrer and a Content-Security-Policy whose hashes are the SHA-256
#   (computed here with Digest::SHA) of the page's inline script and style; HEAD answers
#   the headers alone; POST of the root is a 404 as before, of ui a 405; a GET of pause or
#   resume changes nothing.
use strict;
use warnings;
use Test::More;
use Digest::SHA qw(sha256_base64);
use MIME::Base64 qw(encode_base64);
use Intermission::Test;

write_file('htpasswd', "ops:{PLAIN}secret\n");

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        intermission on;
        location / { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
    }
    %%CONTROL_SERVER%%
    server {
        listen 127.0.0.1:%%AUTH_PORT%%;
        location /ops/ {
            intermission_control;
            auth_basic "intermission";
            auth_basic_user_file %%PREFIX%%/htpasswd;
        }
    }
}
CONF

my $port = port('PORT');
my $cport = port('CTL_PORT');
my $aport = port('AUTH_PORT');
my $host = "127.0.0.1:$cport";
my $good = 'Basic ' . encode_base64('ops:secret', '');

sub paused { my $s = scope_status('default'); $s ? ($s->{paused} ? 1 : 0) : 'no status' }

sub post {
    my ($cmd, @h) = @_;
    my ($st, $h, $j) = ctl('POST', $cmd, undef, headers => [Host => $host, @h]);
    return ($st, $h, $j);
}

my @cross = (
    ['Sec-Fetch-Site: cross-site', ['Sec-Fetch-Site' => 'cross-site', Origin => 'http://evil.test']],
    ['Sec-Fetch-Site: same-site',  ['Sec-Fetch-Site' => 'same-site', Origin => "http://127.0.0.1:$port"]],
    ['Sec-Fetch-Site: cross-site, Origin = Host', ['Sec-Fetch-Site' => 'cross-site', Origin => "http://$host"]],
    ['Origin of another host',     [Origin => 'http://evil.test']],
    ['Origin of another port',     [Origin => "http://127.0.0.1:$port"]],
    ['Origin: null',               [Origin => 'null']],
);

# ---- a running scope stays running
is(paused(), 0, 'running at first');
for my $c (@cross) {
    my ($what, $h) = @$c;
    my ($st, $hd, $j) = post('pause', @$h);
    is($st, 403, "pause, $what: 403");
    like($hd->{'content-type'} // '', qr{^application/json}, "pause, $what: a JSON answer");
    like(($j // {})->{error} // '', qr/cross-site/, "pause, $what: the error says why");
    is(paused(), 0, "pause, $what: still running");
}
ok(scalar error_log_lines(qr/intermission: pause from 127\.0\.0\.1 refused, nothing changed: refused a cross-site request \(Sec-Fetch-Site is "cross-site"\)/),
   'the refusal is logged with its reason');

# ---- a paused scope stays paused, its held request stays held
my ($st) = post('pause');
is($st, 200, 'pause with neither header (curl): 200');
my $held = send_only($port, '/held');
ok(wait_held('default', 1), 'one request held');
for my $c (@cross) {
    my ($what, $h) = @$c;
    ($st) = post('resume', @$h);
    is($st, 403, "resume, $what: 403");
    is(paused(), 1, "resume, $what: still paused");
}
is(total_held(), 1, 'the request is still held after every refused resume');
my ($r) = read_responses(0.3, $held);
ok(!$r, 'and not answered');
my $j;
($st, undef, $j) = post('resume', 'Sec-Fetch-Site' => 'same-origin', Origin => "http://$host");
is($st, 200, "resume from the page's own origin (Sec-Fetch-Site: same-origin): 200");
is($j->{scopes}[0]{released}, 1, 'it released the held request');
($r) = read_responses(5, $held);
is($r && $r->[0], 200, 'the held request is answered 200');
$held->close;

($st) = post('pause', Origin => "http://$host");
is($st, 200, 'pause with Origin = Host and no Sec-Fetch-Site (an older browser): 200');
($st) = post('resume', 'Sec-Fetch-Site' => 'none');
is($st, 200, 'resume with Sec-Fetch-Site: none (typed by the user): 200');
is(paused(), 0, 'running again');

# ---- intermissionctl (no Origin) is unaffected
my $E = "http://127.0.0.1:$cport/ctl/";
my ($rc, $out, $err) = intermissionctl('pause', '--endpoint', $E);
is($rc, 0, 'intermissionctl pause: exit 0') or diag($err);
is(paused(), 1, 'intermissionctl paused');
($rc, undef, $err) = intermissionctl('resume', '--endpoint', $E);
is($rc, 0, 'intermissionctl resume: exit 0') or diag($err);
is(paused(), 0, 'intermissionctl resumed');

# ---- behind auth_basic
my $ahost = "127.0.0.1:$aport";
sub apost {
    my ($cmd, @h) = @_;
    return ctl('POST', $cmd, undef, port => $aport, path => "/ops/$cmd", headers => [Host => $ahost, @h]);
}
($st) = apost('pause', 'Sec-Fetch-Site' => 'cross-site', Origin => 'http://evil.test');
is($st, 401, 'auth_basic, cross-site without credentials: 401 (auth_basic first)');
($st) = apost('pause', Authorization => $good, 'Sec-Fetch-Site' => 'cross-site', Origin => 'http://evil.test');
is($st, 403, 'auth_basic, cross-site with valid (cached) credentials: 403');
($st) = apost('pause', Authorization => $good, Origin => 'http://evil.test');
is($st, 403, 'auth_basic, Origin of another host with valid credentials: 403');
is(paused(), 0, 'auth_basic: nothing paused by them');
($st) = apost('pause', Authorization => $good, 'Sec-Fetch-Site' => 'same-origin', Origin => "http://$ahost");
is($st, 200, 'auth_basic, same-origin with credentials: 200');
is(paused(), 1, 'paused');
($rc, undef, $err) = intermissionctl('resume', '--endpoint', "http://$ahost/ops/", '--user', 'ops:secret');
is($rc, 0, 'intermissionctl --user resume through auth_basic: exit 0') or diag($err);
is(paused(), 0, 'resumed');

# ---- the page
my $page = read_file_text(repo_root() . '/crates/intermission-core/src/ui/status.html');
my ($script) = $page =~ m{<script>(.*?)</script>}s;
my ($style) = $page =~ m{<style>(.*?)</style>}s;
my $hash = sub { my $b = sha256_base64($_[0]); $b .= '=' while length($b) % 4; "'sha256-$b'" };
my $csp = "default-src 'none'; script-src " . $hash->($script) . '; style-src ' . $hash->($style)
        . "; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
for my $path ('/ctl/', '/ctl/ui', '/ctl/some/where/') {
    my ($st, $h, $body) = http_get($cport, $path);
    is($st, 200, "GET $path: 200");
    is($h->{'content-type'}, 'text/html; charset=utf-8', "GET $path: text/html; charset=utf-8");
    is($h->{'cache-control'}, 'no-store', "GET $path: Cache-Control: no-store");
    is($h->{'x-content-type-options'}, 'nosniff', "GET $path: nosniff");
    is($h->{'x-frame-options'}, 'DENY', "GET $path: X-Frame-Options: DENY");
    is($h->{'referrer-policy'}, 'no-referrer', "GET $path: Referrer-Policy: no-referrer");
    is($h->{'content-security-policy'}, $csp, "GET $path: the CSP names the page's script and style by their SHA-256");
    ok(defined $body && $body eq $page, "GET $path: the page, " . length($page) . ' bytes');
}
{
    my $c = http_connect($cport);
    $c->send_request(method => 'HEAD', path => '/ctl/', keepalive => 0);
    my ($st, $h, $body) = $c->read_response;
    is($st, 200, 'HEAD /ctl/: 200');
    is($h->{'content-length'}, length($page), 'HEAD /ctl/: the length of the page');
    is($body // '', '', 'HEAD /ctl/: no body');
    $c->close;
}
my ($sth, $h) = ctl('POST', '', undef, path => '/ctl/');
is($sth, 404, 'POST /ctl/: 404, as before (the root is the page for a GET only)');
($sth, $h) = ctl('POST', 'ui');
is($sth, 405, 'POST ui: 405');
is($h->{allow}, 'GET, HEAD', 'POST ui: Allow: GET, HEAD');
($st, undef, $j) = ctl('GET', 'ui', 'scope=default');
is($st, 400, 'GET ui?scope=default: 400 (the page takes no argument)');
($st, $h) = ctl('GET', 'status');
is($h->{'x-content-type-options'}, 'nosniff', 'every control answer has nosniff (status)');
($st) = http_get($aport, '/ops/');
is($st, 401, 'the page behind auth_basic without credentials: 401');
($st, $h) = http_get($aport, '/ops/', headers => [Authorization => $good]);
is($st, 200, 'the page behind auth_basic with credentials: 200');
for my $cmd (qw(pause enable resume disable)) {
    ($st) = ctl('GET', $cmd);
    is($st, 405, "GET $cmd: 405");
}
is(paused(), 0, 'no GET changed anything');

finish();
