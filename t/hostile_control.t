#!/usr/bin/perl
# hostile_control.t: the control endpoint under hostile and concurrent use.
# worker_processes 2; scopes "default" (location /) and "other" (/other/).
#
# Part 1: hostile requests. The state is mixed on purpose: "default" is paused and holds 2
# requests, "other" runs; so a wrongly applied pause or resume (of either scope, or of all)
# shows. Each request below is sent raw, on its own connection, and gets the expected 4xx
# (or 200 where the request is valid and changes nothing, or nginx's own 400/405/414/505
# before the module sees it); the module's answers are JSON ({"error": ...},
# application/json, Cache-Control: no-store), a 405 lists the right methods in Allow; and
# after each one the state (paused, held, paused_since, auto_resume_at and every counter of
# both scopes) is unchanged. Covered: every command with GET, HEAD, POST, PUT, DELETE,
# PATCH, OPTIONS, TRACE and a made-up method; lowercase methods; malformed, unknown and
# repeated arguments; control characters (%1B, %7F, CR LF: refused, and not echoed raw in
# the answer, no header injected); huge numbers (timeout=99999999999999999999s,
# auto_resume=18446744073709551616ms, u64::MAX ms, 25h); zero, negative, fractional and
# odd times (repeated or unordered units: 1s1s, 1s1m); non-UTF-8 bytes (%ff and raw \xff)
# in path and query; NUL bytes; query strings of 4 KB (accepted), 4 KB + 1 and ~8 KB
# (module's 400), 9 KB and 20 KB (nginx's 414, beyond large_client_header_buffers); bodies
# with Content-Length and chunked on GET/POST/DELETE, with a request smuggled inside the
# body (it must not run: one answer only, state unchanged); bodies of 512 KB (discarded)
# and 2 MB (nginx's 413, over client_max_body_size); both Content-Length and
# Transfer-Encoding; a broken chunked body; `Expect: 100-continue` without the body;
# HTTP/2.0 in the request line; no Host; two Hosts. The 2 held requests are still held afterwards, and answered 200 on the resume.
#
# (The "released" figures of the resume answers are noted, not checked: under concurrency
# they can count a request twice, see resume_released.t.)
#
# Part 2: 20 concurrent clients (processes) x 25 commands each, alternating pause and
# resume (each client its own mix: all scopes, scope=default, scope=other; some pauses with
# auto_resume=1h), with random gaps, while requests flow to both scopes (one connection
# each). Every command answers 200. Then an explicit pause (all) shows both paused (with
# the deadline a scope that was paused had, none for the others), and an explicit resume
# shows both running, nothing held, no auto-resume deadline. Every request
# sent is answered 200 and reached the backend exactly once (none lost), and per scope
# counters.held == released + aborted + timed_out + held (now), with aborted, timed_out and
# rejected 0; metrics agree with status.
use strict;
use warnings;
use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_set_header X-Seq $http_x_seq;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /other/ {
            intermission other;
            proxy_set_header X-Seq $http_x_seq;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $cport = port('CTL_PORT');

sub snapshot {
    my $j = ctl_status() or return 'status failed';
    return join ';', map {
        my $s = $_;
        join(':', $s->{name}, $s->{paused}, $s->{held}, $s->{paused_since} // '-', $s->{auto_resume_at} // '-',
             map { "$_=" . ($s->{counters}{$_} // '?') } sort keys %{ $s->{counters} || {} })
    } sort { $a->{name} cmp $b->{name} } @{ $j->{scopes} || [] };
}

# ---------------------------------------------------------------- part 1

is(scalar ctl('POST', 'pause', 'scope=default'), 200, 'default paused');
my @held = map {
    my $c = http_connect($port);
    $c->send_request(path => "/held/$_", headers => ['X-Seq' => "held$_"], keepalive => 0);
    $c
} 1 .. 2;
ok(wait_held('default', 2), 'two requests held in default');
my $initial = snapshot();
like($initial, qr/^default:1:2:\S+?Z:-:.*;other:0:0:-:-:/, 'mixed state: default paused holding 2, other running')
    or diag($initial);

# raw($bytes, %opt) -> (status, \%headers, body, raw bytes after the answer) on a fresh connection
sub raw {
    my ($bytes, %o) = @_;
    my $c = http_connect($cport);
    push @{ $c->{methods} }, $o{method} // 'GET';
    $c->send_raw($bytes);
    $c->flush(5);
    my ($st, $h, $body) = $c->read_response($o{timeout} // 5);
    my $extra = '';
    if (defined $st && !$c->closed(0.3)) {
        # a second answer (a smuggled request that ran) would show here
        $c->readable(0.2);
        $extra = $c->{rbuf};
    } else {
        $extra = $c->{rbuf} // '';
    }
    $c->close;
    return ($st, $h, $body, $extra);
}

sub req_line { my ($m, $target, %o) = @_; "$m $target HTTP/1.1\r\nHost: localhost\r\n" . ($o{headers} // '') . "Connection: close\r\n\r\n" . ($o{body} // '') }

my @cases;    # [name, bytes, expected status, kind: module|nginx|ok, allow, method]

my %ALLOW = (status => 'GET,HEAD', metrics => 'GET,HEAD', drain => 'GET,HEAD',
             enable => 'POST,PUT', pause => 'POST,PUT', disable => 'POST,PUT', resume => 'POST,PUT');
for my $cmd (sort keys %ALLOW) {
    for my $m (qw(GET HEAD POST PUT DELETE PATCH OPTIONS TRACE FOOBAR)) {
        my $takes = grep { $_ eq $m } split /,/, $ALLOW{$cmd};
        next if $takes && $ALLOW{$cmd} eq 'POST,PUT';    # a real pause / resume: not hostile
        my $len = $m =~ /^(POST|PUT|PATCH)$/ ? "Content-Length: 0\r\n" : '';
        if ($m eq 'TRACE') {
            push @cases, ["$m /ctl/$cmd", req_line($m, "/ctl/$cmd", headers => $len), 405, 'nginx', undef, $m];
        } elsif ($takes) {
            push @cases, ["$m /ctl/$cmd", req_line($m, "/ctl/$cmd"), 200, 'ok', undef, $m];
        } else {
            push @cases, ["$m /ctl/$cmd", req_line($m, "/ctl/$cmd", headers => $len), 405, 'module', $ALLOW{$cmd}, $m];
        }
    }
}
push @cases,
    ['lowercase get', req_line('get', '/ctl/status'), 400, 'nginx'],
    ['lowercase post', req_line('post', '/ctl/resume', headers => "Content-Length: 0\r\n"), 400, 'nginx'];

# arguments: [method, command, query, status]
my @args = (
    ['POST', 'resume',  'scope=default&scope=default', 400],
    ['POST', 'resume',  'scope=default&scope=other',   400],
    ['POST', 'pause',   'scope=other&scope=other',     400],
    ['POST', 'pause',   'scope=other&auto_resume=1h&auto_resume=1h', 400],
    ['POST', 'pause',   'scope=other&wait=drained&wait=drained', 400],
    ['GET',  'drain',   'timeout=1s&timeout=2s',       400],
    ['POST', 'pause',   '=x',                          400],
    ['POST', 'pause',   '=',                           400],
    ['POST', 'resume',  'scope',                       400],
    ['POST', 'resume',  'scope=',                      400],
    ['POST', 'resume',  'scope==default',              400],
    ['POST', 'resume',  'scope=default;x',             400],
    ['POST', 'resume',  'scope=default%20',            400],
    ['POST', 'resume',  'scope=%20default',            400],
    ['POST', 'resume',  'scope=de+fault',              400],
    ['POST', 'resume',  'SCOPE=default',               400],
    ['POST', 'resume',  'scope=DEFAULT',               404],
    ['POST', 'resume',  'scope=%00',                   400],
    ['POST', 'resume',  'scope=de%00fault',            400],
    ['POST', 'resume',  'scope=%ff',                   400],
    ['POST', 'resume',  'scope=%C3%A9',                400],
    ['POST', 'resume',  'scope=%',                     400],
    ['POST', 'resume',  'scope=%g0',                   400],
    ['POST', 'resume',  'scope=' . ('a' x 65),         400],
    ['POST', 'resume',  'scope=' . ('a' x 64),         404],
    ['POST', 'resume',  'foo=bar',                     400],
    ['POST', 'resume',  'auto_resume=1h',              400],
    ['POST', 'resume',  'wait=drained',                400],
    ['GET',  'status',  'wait=drained',                400],
    ['GET',  'status',  'timeout=1s',                  400],
    ['GET',  'metrics', 'auto_resume=1s',              400],
    ['POST', 'pause',   'scope=other&wait=Drained',    400],
    ['POST', 'pause',   'scope=other&wait=',           400],
    ['POST', 'pause',   'scope=other&timeout=5s',      400],
    # huge numbers
    ['GET',  'drain',   'timeout=99999999999999999999s',                   400],
    ['POST', 'pause',   'scope=other&wait=drained&timeout=99999999999999999999s', 400],
    ['POST', 'pause',   'scope=other&auto_resume=18446744073709551616ms',  400],
    ['POST', 'pause',   'scope=other&auto_resume=18446744073709551615ms',  400],
    ['POST', 'pause',   'scope=other&auto_resume=18446744073709551616',    400],
    ['POST', 'pause',   'scope=other&auto_resume=999999999999',            400],
    ['POST', 'pause',   'scope=other&auto_resume=4294967296ms',            400],
    ['POST', 'pause',   'scope=other&auto_resume=25h',                     400],
    ['POST', 'pause',   'scope=other&auto_resume=86400001ms',              400],
    ['POST', 'pause',   'scope=other&auto_resume=1d1ms',                   400],
    ['POST', 'pause',   'scope=other&auto_resume=23h61m',                  400],
    ['POST', 'pause',   'scope=other&auto_resume=' . ('9' x 300) . 's',    400],
    # zero, negative and odd times
    ['POST', 'pause',   'scope=other&auto_resume=0',       400],
    ['POST', 'pause',   'scope=other&auto_resume=0s',      400],
    ['POST', 'pause',   'scope=other&auto_resume=0ms',     400],
    ['POST', 'pause',   'scope=other&auto_resume=0h0m0s',  400],
    ['POST', 'pause',   'scope=other&auto_resume=-1s',     400],
    ['POST', 'pause',   'scope=other&auto_resume=-5',      400],
    ['POST', 'pause',   'scope=other&auto_resume=%2D5s',   400],
    ['POST', 'pause',   'scope=other&auto_resume=+5s',     400],
    ['POST', 'pause',   'scope=other&auto_resume=5.5s',    400],
    ['POST', 'pause',   'scope=other&auto_resume=1e3',     400],
    ['POST', 'pause',   'scope=other&auto_resume=5%20s',   400],
    ['POST', 'pause',   'scope=other&auto_resume=5S',      400],
    ['POST', 'pause',   'scope=other&auto_resume=ms',      400],
    ['POST', 'pause',   'scope=other&auto_resume=5m5',     400],
    ['POST', 'pause',   'scope=other&auto_resume=5x',      400],
    ['POST', 'pause',   'scope=other&auto_resume=',        400],
    ['POST', 'pause',   'scope=other&auto_resume=0x10',    400],
    ['POST', 'pause',   'scope=other&auto_resume=%EF%BC%95s', 400],
    ['POST', 'pause',   'scope=other&auto_resume=1s1s',    400],
    ['POST', 'pause',   'scope=other&auto_resume=1s1m',    400],
    ['POST', 'pause',   'scope=other&auto_resume=%1B5s',   400],
    # control characters: refused, and not echoed raw into the error message
    ['POST', 'resume',  'scope=%1B%5B31m',             400],
    ['POST', 'resume',  'scope=%7F',                   400],
    ['POST', 'resume',  'scope=a%0D%0AX-Injected:%201', 400],
    ['GET',  'status',  '%1B=1',                       400],
    ['GET',  'drain',   'timeout=0',                       400],
    ['GET',  'drain',   'timeout=-1ms',                    400],
    ['POST', 'pause',   'scope=other&wait=drained&timeout=0ms', 400],
    # unknown scope or command
    ['POST', 'pause',   'scope=nope',  404],
    ['GET',  'status',  'scope=nope',  404],
);
for my $a (@args) {
    my ($m, $cmd, $q, $want) = @$a;
    my $len = $m eq 'POST' ? "Content-Length: 0\r\n" : '';
    my $shown = length($q) > 80 ? substr($q, 0, 60) . '...(' . length($q) . ' bytes)' : $q;
    push @cases, ["$m /ctl/$cmd?$shown", req_line($m, "/ctl/$cmd?$q", headers => $len), $want, 'module'];
}

# non-UTF-8 and odd bytes in path and query
push @cases,
    ['GET /ctl/status?scope=\xff (raw)',   req_line('GET', "/ctl/status?scope=\xff"), 400, 'module'],
    ['POST /ctl/resume?scope=\xff\xfe (raw)', req_line('POST', "/ctl/resume?scope=\xff\xfe", headers => "Content-Length: 0\r\n"), 400, 'module'],
    ['POST /ctl/resume?\xff=1 (raw)',      req_line('POST', "/ctl/resume?\xff=1", headers => "Content-Length: 0\r\n"), 400, 'module'],
    ['GET /ctl/\xff (raw)',                req_line('GET', "/ctl/\xff"), 404, 'module'],
    ['POST /ctl/resum\xff (raw)',          req_line('POST', "/ctl/resum\xff", headers => "Content-Length: 0\r\n"), 404, 'module'],
    ['GET /ctl/%ff',                       req_line('GET', '/ctl/%ff'), 404, 'module'],
    ['POST /ctl/resume%ff',                req_line('POST', '/ctl/resume%ff', headers => "Content-Length: 0\r\n"), 404, 'module'],
    ['POST /ctl/%C3%A9',                   req_line('POST', '/ctl/%C3%A9', headers => "Content-Length: 0\r\n"), 404, 'module'],
    ['GET /ctl/\xff/status (raw, valid command)', req_line('GET', "/ctl/\xff/status"), 200, 'ok'],
    ['POST /ctl/RESUME',                   req_line('POST', '/ctl/RESUME', headers => "Content-Length: 0\r\n"), 404, 'module'],
    ['POST /ctl/resume/',                  req_line('POST', '/ctl/resume/', headers => "Content-Length: 0\r\n"), 404, 'module'],
    ['POST /ctl/',                         req_line('POST', '/ctl/', headers => "Content-Length: 0\r\n"), 404, 'module'],
    ['POST /ctl/resume;x=1',               req_line('POST', '/ctl/resume;x=1', headers => "Content-Length: 0\r\n"), 404, 'module'],
    ['POST /ctl/resume%00',                req_line('POST', '/ctl/resume%00', headers => "Content-Length: 0\r\n"), 400, 'nginx'],
    ['POST /ctl/resume\0 (raw NUL)',       req_line('POST', "/ctl/resume\0", headers => "Content-Length: 0\r\n"), 400, 'nginx'],
    ['POST /ctl/resume?scope=default\0 (raw NUL in query)', req_line('POST', "/ctl/resume?scope=default\0", headers => "Content-Length: 0\r\n"), 400, 'nginx'];

# long query strings: the module takes 4096 bytes at most; nginx's request line 8 KB
{
    my $q4096 = 'scope=default' . ('&' x (4096 - 13));
    push @cases,
        ['GET status, a 4096-byte query (valid)', req_line('GET', "/ctl/status?$q4096"), 200, 'ok'],
        ['POST resume, a 4097-byte query', req_line('POST', "/ctl/resume?$q4096&", headers => "Content-Length: 0\r\n"), 400, 'module'],
        ['POST resume, a ~8 KB query', req_line('POST', '/ctl/resume?scope=default&x=' . ('a' x 8000), headers => "Content-Length: 0\r\n"), 400, 'module'],
        ['POST pause, a ~8 KB auto_resume', req_line('POST', '/ctl/pause?scope=other&auto_resume=' . ('1' x 8000), headers => "Content-Length: 0\r\n"), 400, 'module'],
        ['POST resume, a 9 KB query (beyond large_client_header_buffers)', req_line('POST', '/ctl/resume?x=' . ('a' x 9000), headers => "Content-Length: 0\r\n"), 414, 'nginx'],
        ['GET status, a 20 KB query', req_line('GET', '/ctl/status?x=' . ('a' x 20000)), 414, 'nginx'],
        ['POST resume, a 9 KB header', req_line('POST', '/ctl/resume', headers => "Content-Length: 0\r\nX-Big: " . ('b' x 9000) . "\r\n"), 400, 'nginx'];
}

# bodies, smuggling, Expect
{
    my $smuggle = "POST /ctl/pause?scope=other HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n";
    my $smuggle2 = "POST /ctl/resume?scope=default HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n";
    my $chunk = sub { my $b = shift; sprintf('%x', length $b) . "\r\n$b\r\n0\r\n\r\n" };
    my $ka = sub { my ($m, $t, $h, $b) = @_; "$m $t HTTP/1.1\r\nHost: localhost\r\n$h\r\n$b" };
    push @cases,
        ['GET status with a Content-Length body',
         $ka->('GET', '/ctl/status', 'Content-Length: 5' . "\r\n", 'hello'), 200, 'ok'],
        ['GET status with a body that is a pause request (smuggling, keep-alive)',
         $ka->('GET', '/ctl/status', 'Content-Length: ' . length($smuggle) . "\r\n", $smuggle), 200, 'ok'],
        ['GET status with a chunked body that is a resume request (smuggling, keep-alive)',
         $ka->('GET', '/ctl/status', "Transfer-Encoding: chunked\r\n", $chunk->($smuggle2)), 200, 'ok'],
        ['HEAD drain with a body that is a resume request',
         $ka->('HEAD', '/ctl/drain', 'Content-Length: ' . length($smuggle2) . "\r\n", $smuggle2), 200, 'ok', undef, 'HEAD'],
        ['POST resume?foo=1 with a Content-Length body',
         $ka->('POST', '/ctl/resume?foo=1', "Content-Length: 11\r\nConnection: close\r\n", 'scope=other'), 400, 'module'],
        ['POST pause?scope=nope with a chunked body',
         $ka->('POST', '/ctl/pause?scope=nope', "Transfer-Encoding: chunked\r\nConnection: close\r\n", $chunk->('x' x 100)), 404, 'module'],
        ['DELETE resume with a body (smuggled resume inside)',
         $ka->('DELETE', '/ctl/resume', 'Content-Length: ' . length($smuggle2) . "\r\n", $smuggle2), 405, 'module', 'POST,PUT'],
        ['GET status with a 2 MB body (over client_max_body_size)',
         $ka->('GET', '/ctl/status', "Content-Length: 2097152\r\nConnection: close\r\n", 'z' x 2097152), 413, 'nginx'],
        ['GET status with a 512 KB body',
         $ka->('GET', '/ctl/status', "Content-Length: 524288\r\nConnection: close\r\n", 'z' x 524288), 200, 'ok'],
        ['POST resume?scope=bad! with a 2 MB chunked body',
         $ka->('POST', '/ctl/resume?scope=bad!', "Transfer-Encoding: chunked\r\nConnection: close\r\n", $chunk->('z' x 2097152)), 400, 'module'],
        ['POST resume with Content-Length and Transfer-Encoding',
         $ka->('POST', '/ctl/resume', "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n", $chunk->('hello')), 400, 'nginx'],
        ['POST resume with a bad Content-Length',
         $ka->('POST', '/ctl/resume', "Content-Length: abc\r\nConnection: close\r\n", ''), 400, 'nginx'],
        ['POST resume with a negative Content-Length',
         $ka->('POST', '/ctl/resume', "Content-Length: -1\r\nConnection: close\r\n", ''), 400, 'nginx'],
        ['GET status with a broken chunked body',
         $ka->('GET', '/ctl/status', "Transfer-Encoding: chunked\r\nConnection: close\r\n", "zz\r\nhello\r\n0\r\n\r\n"), 400, 'nginx'],
        ['POST resume?bogus=1 with Expect: 100-continue, no body sent',
         $ka->('POST', '/ctl/resume?bogus=1', "Content-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n", ''), 400, 'module'],
        ['POST pause?scope=other&auto_resume=0 with Expect: 100-continue, no body sent',
         $ka->('POST', '/ctl/pause?scope=other&auto_resume=0', "Content-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n", ''), 400, 'module'],
        ['GET status with Expect: 100-continue, no body sent',
         $ka->('GET', '/ctl/status', "Content-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n", ''), 200, 'ok'],
        ['PUT resume?scope=nope with Expect: 100-continue and the body',
         $ka->('PUT', '/ctl/resume?scope=nope', "Content-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n", 'abcd'), 404, 'module'],
        ['HTTP/2.0 in the request line', "POST /ctl/resume HTTP/2.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", 505, 'nginx'],
        ['HTTP/1.1 without Host', "POST /ctl/resume HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 400, 'nginx'],
        ['two Host headers', "POST /ctl/resume HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 400, 'nginx'];
}

for my $case (@cases) {
    my ($name, $bytes, $want, $kind, $allow, $method) = @$case;
    $name =~ s/([^\x20-\x7e])/sprintf('\\x%02x', ord $1)/ge;
    my ($st, $h, $body, $extra) = raw($bytes, method => $method // 'GET');
    is($st, $want, "$name -> $want") or diag('body: ' . substr($body // '(no answer)', 0, 300));
    if (defined $st && $kind eq 'module') {
        like($h->{'content-type'} // '', qr{^application/json}, "$name: JSON");
        like($h->{'cache-control'} // '', qr/no-store/, "$name: Cache-Control: no-store");
        if (($method // '') ne 'HEAD') {
            my $j = eval { JSON::PP->new->decode($body) };
            ok($j && defined $j->{error} && length $j->{error}, "$name: {\"error\": ...}") or diag('body: ' . ($body // ''));
            ok((($body // '') =~ s/\n\z//r) !~ /[\x00-\x1f\x7f]/, "$name: no raw control character in the answer");
            ok(!grep({ /^x-injected$/i } keys %$h), "$name: no injected header");
        }
        if ($allow) {
            is(join(',', sort map { uc } split /\s*,\s*/, $h->{allow} // ''), $allow, "$name: Allow: $allow");
        }
    }
    is($extra, '', "$name: one answer only (nothing more on the connection)")
        or diag('more: ' . substr($extra, 0, 200));
    is(snapshot(), $initial, "$name: state unchanged");
}

ok(none_readable(0.1, @held), 'the held requests are still held after the hostile requests');
is(scalar(grep { ($_->{seq} // '') =~ /^held/ } backend_log()), 0, 'the backend saw none of them');
{
    my (undef, undef, $j) = ctl('POST', 'resume', 'scope=default');
    is($j && $j->{scopes}[0]{released}, 2, 'resume of default released 2');
    my @r = read_responses(5, @held);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'both held requests answered 200');
    $_->close for @held;
}

# ---------------------------------------------------------------- part 2

my $CLIENTS = 20;
my $CMDS = 25;
my $c0 = ctl_status() or die "status failed\n";
my %base = map { $_->{name} => { %{ $_->{counters} } } } @{ $c0->{scopes} };

my @kids;
my $t_start = time;
for my $k (1 .. $CLIENTS) {
    my $out = prefix() . "/storm-$k.txt";
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        srand($$ ^ time);
        open my $fh, '>', $out or POSIX::_exit(1);
        # client k: its scope mix: all, default, other, or random per command
        my $mix = $k % 4;
        for my $i (1 .. $CMDS) {
            my $cmd = $i % 2 ? 'pause' : 'resume';
            my $scope = $mix == 0 ? undef : $mix == 1 ? 'default' : $mix == 2 ? 'other'
                      : (undef, 'default', 'other')[int rand 3];
            my @q;
            push @q, "scope=$scope" if defined $scope;
            push @q, 'auto_resume=1h' if $cmd eq 'pause' && $k % 3 == 0;
            my ($st, undef, undef, $raw) = ctl('POST', $cmd, join('&', @q), timeout => 20);
            $raw //= '';
            $raw =~ s/\s+/ /g;
            print $fh join("\t", $cmd, $scope // '*', $st // 'none', $raw), "\n";
            sleep rand(0.03);
        }
        close $fh;
        POSIX::_exit(0);
    }
    push @kids, $pid;
}

# requests flow while the clients work
my (@conns, %sent);
my $n = 0;
while (1) {
    my $running = grep { waitpid($_, POSIX::WNOHANG()) == 0 } @kids;
    @kids = grep { kill 0, $_ } @kids;
    last if !@kids && $n >= 200;
    last if time - $t_start > 60;
    $n++;
    my $path = $n % 2 ? "/flow/$n" : "/other/flow/$n";
    my $c = http_connect($port);
    $c->send_request(path => $path, headers => ['X-Seq' => "flow$n"], keepalive => 0);
    push @conns, $c;
    $sent{"flow$n"} = 1;
    sleep 0.005;
}
waitpid($_, 0) for @kids;
note(sprintf('%d requests sent while %d clients sent %d commands in %.1f s', $n, $CLIENTS, $CLIENTS * $CMDS, time - $t_start));

my @answers;
for my $k (1 .. $CLIENTS) {
    push @answers, map { [split /\t/, $_, 4] } file_lines("storm-$k.txt");
}
is(scalar @answers, $CLIENTS * $CMDS, 'every command was sent and answered');
my @bad = grep { $_->[2] ne '200' } @answers;
is(scalar @bad, 0, 'every concurrent pause/resume answered 200') or diag(join "\n", map { join ' ', @$_ } @bad[0 .. ($#bad > 9 ? 9 : $#bad)]);

my %released_by_answers;
for my $a (@answers) {
    next unless $a->[0] eq 'resume';
    my $j = eval { JSON::PP->new->decode($a->[3]) } or next;
    $released_by_answers{ $_->{name} } += $_->{released} // 0 for @{ $j->{scopes} || [] };
}

# final explicit pause, then resume: the state follows the last command
{
    my $s0 = ctl_status();
    my ($st, undef, $j) = ctl('POST', 'pause');
    is($st, 200, 'final pause (all scopes)');
    my $s = ctl_status();
    is_deeply([map { [$_->{name}, $_->{paused}] } sort { $a->{name} cmp $b->{name} } @{ $s->{scopes} }],
              [['default', 1], ['other', 1]], 'both scopes paused after the final pause');
    my %dl0 = map { $_->{name} => $_->{paused} ? $_->{auto_resume_at} : undef } @{ $s0->{scopes} || [] };
    is_deeply({ map { $_->{name} => $_->{auto_resume_at} } @{ $s->{scopes} } }, \%dl0,
              'a pause without auto_resume sets no deadline, and keeps the one a paused scope had');
    ($st, undef, $j) = ctl('POST', 'resume');
    is($st, 200, 'final resume (all scopes)');
    $released_by_answers{ $_->{name} } += $_->{released} // 0 for @{ ($j && $j->{scopes}) || [] };
    $s = ctl_status();
    is_deeply([map { [$_->{name}, $_->{paused}, $_->{auto_resume_at}] } sort { $a->{name} cmp $b->{name} } @{ $s->{scopes} }],
              [['default', 0, undef], ['other', 0, undef]], 'both running, no deadline after the final resume');
    # the other worker takes its released requests out of its queue when the eventfd
    # wakes it: "held" can lag the resume answer by a moment
    ok(wait_held(undef, 0), 'nothing held after the final resume');
}

my @r = read_responses(30, @conns);
my @not200 = grep { !$r[$_] || $r[$_][0] != 200 } 0 .. $#r;
is(scalar @not200, 0, "all $n requests answered 200 (none lost)")
    or diag(scalar(@not200) . ' not answered 200, e.g. ' . join(', ', map { $r[$_] ? $r[$_][0] : 'none' } @not200[0 .. ($#not200 > 9 ? 9 : $#not200)]));
$_->close for @conns;

sleep 0.3;
my %at;
$at{ $_->{seq} }++ for grep { ($_->{seq} // '') =~ /^flow/ } backend_log();
is(scalar(grep { !$at{$_} } keys %sent), 0, 'the backend received every request');
is(scalar(grep { $_ != 1 } values %at), 0, 'each exactly once');

my $fin = ctl_status();
for my $s (sort { $a->{name} cmp $b->{name} } @{ $fin->{scopes} }) {
    my %c = %{ $s->{counters} };
    my %d = map { $_ => $c{$_} - ($base{ $s->{name} }{$_} // 0) } keys %c;
    note("$s->{name}: counters during part 2: " . join(' ', map { "$_=$d{$_}" } sort keys %d)
       . "; released per the resume answers: " . ($released_by_answers{ $s->{name} } // 0));
    is($c{held}, $c{released} + $c{aborted} + $c{timed_out} + $s->{held},
       "$s->{name}: counters.held == released + aborted + timed_out + held now ($c{held})");
    is($d{aborted}, 0, "$s->{name}: nothing aborted");
    is($d{timed_out}, 0, "$s->{name}: nothing timed out");
    is($d{rejected}, 0, "$s->{name}: nothing rejected");
}

# metrics agree with status
{
    my ($st, undef, undef, $text) = ctl('GET', 'metrics');
    is($st, 200, 'metrics answered');
    my $s2 = ctl_status();
    for my $s (@{ $s2->{scopes} }) {
        for my $k (qw(held released aborted timed_out rejected)) {
            my ($v) = ($text // '') =~ /^intermission_${k}_total\{[^}]*scope="\Q$s->{name}\E"[^}]*\}\s+(\S+)/m;
            is($v, $s->{counters}{$k}, "metrics: intermission_${k}_total{scope=\"$s->{name}\"} == status");
        }
    }
}

finish();
