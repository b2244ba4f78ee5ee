#!/usr/bin/perl
# failure_hold.t: `intermission_on_failure hold`: a request whose upstream attempt failed
# with nothing of it reaching the backend is held in its scope, not answered 502, and sent
# again once the backend is back. Each block has a scope and a backend of its own.
# (1) Backend stopped, 5 GETs and 5 POSTs (body "id=<n>") sent 20 ms apart: the first one
#     fails and is held while the scope is not down yet (one failure does not put it
#     down); all 10 are held (status held 10) and none is answered within 1.5 s; a trial
#     fails within interval + 1 s: status down true, down_since an RFC 3339 time,
#     down_ms matching it, last_error a string, counters failed >= 10, went_down 1, checks
#     >= 1; trials go on while down, about one per interval (not a loop); an [error] line
#     says the scope went down. The backend restarts on its port: every request is
#     answered 200 within interval + 2 s, each reaches the backend exactly once, in arrival
#     order, with its method and (POST) its body's length and md5; status down false,
#     down_since null, held 0, retried 10, gave_up 0; $intermission_result is "retried"
#     for each; an [error] line after the restart says the scope is back, with how long it
#     was down and the 10 it held. Before any failure: down false (a JSON boolean),
#     down_since and last_error null, down_ms a number, the five new counters 0.
# (2) A steady load of GETs and POSTs (6/s for 6 s), the backend killed with SIGKILL at
#     2 s (kill_backend, after what was in flight then was answered: a request that
#     reached the backend is not re-sent, and is not what this tests) and started again
#     on its port 2 s later: every request is answered 200, each reaches the backend
#     exactly once with its method and body; counters retried = failed (> 0), went_down
#     at most 1 (whether the scope goes down within the 2 s depends on the jitter of its
#     trials), down false at the end.
# (3) An upstream of two servers, one a port nothing listens on: nginx's
#     proxy_next_upstream serves every request (200, at once), the dead server was tried
#     (a "connect() failed" line), and the scope is never down: failed 0, checks 0,
#     held 0, also an interval later.
# (4) `proxy_request_buffering off`: a POST whose body is still arriving while its backend is
#     down is not held: 502
#     at once, counters gave_up 1, failed 0, held 0.
# (5) A nested location does not inherit the directive: /outer/inner/ (inheriting
#     `intermission nest`) answers 502 at once and nothing is counted failed; /outer/
#     itself holds (not answered within 1 s), until its max_time 2s: 502.
# (6) One URL fails while the backend is fine: /one/dead/ (a dead port) and /one/live/
#     (the live backend) in one scope "one", both `hold interval=2s`. /one/dead/1 is held
#     (failed 1); /one/live/ requests sent right after it (well within the interval) are
#     answered 200 at once and the scope is not down. The trial of /one/dead/1 fails within
#     interval + 1 s: down; from then a new /one/live/ request is held too (the scope is
#     one unit: not answered within 1 s, not at the backend). /one/dead/1 was not re-sent
#     in a loop: its "connect() failed" lines are at most 1 + the trials + the 3 answers
#     of /one/live/ (each of which may count as the scope coming back). At its max_time
#     (6s) /one/dead/1 gets 502 (not before 5.5 s); then the held /one/live/ request is the
#     oldest, its trial succeeds: 200, the scope is up again, it reached the backend once.
# (7) HTTP/2 (nghttp, h2c): a GET and a POST with a body, each on its own connection,
#     while the backend is down: both held, not answered; the backend restarts: both 200,
#     the POST reached the backend once, as a POST with its body.
# (8) "no live upstreams": an upstream of two servers, both dead, max_fails=1
#     fail_timeout=3s. The first request tries both (connection refused) and is held;
#     the next ones within fail_timeout get "no live upstreams" from nginx, which connects
#     nowhere and would answer 502: they are held too (nothing of them reached a backend).
#     One server comes back: once its fail_timeout has passed, every request is answered
#     200, and reached it once; the scope is up.
use strict;
use warnings;
use Test::More;
use Digest::MD5 qw(md5_hex);
use List::Util qw(max);
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $INTERVAL = 1;    # intermission_on_failure's default interval, s
my $NGHTTP = '/usr/bin/nghttp';

start_nginx(<<'CONF');
http {
    log_format result '$request_uri $intermission_result $status';
    access_log %%PREFIX%%/access.log result;
    upstream pair {
        server 127.0.0.1:%%DEAD_PORT%%;
        server 127.0.0.1:%%PAIRBACKEND_PORT%%;
    }
    upstream nolive {
        server 127.0.0.1:%%NOLIVEBACKEND_PORT%% max_fails=1 fail_timeout=3s;
        server 127.0.0.1:%%DEAD_PORT%% max_fails=1 fail_timeout=3s;
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        location /nolive/ {
            intermission nolive;
            intermission_on_failure hold;
            proxy_pass http://nolive;
        }
        location / {
            intermission on;
            intermission_on_failure hold;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /load/ {
            intermission load;
            intermission_on_failure hold;
            proxy_pass http://127.0.0.1:%%LOADBACKEND_PORT%%;
        }
        location /pair/ {
            intermission pair;
            intermission_on_failure hold;
            proxy_pass http://pair;
        }
        location /unbuf/ {
            intermission unbuf;
            intermission_on_failure hold;
            proxy_request_buffering off;
            proxy_pass http://127.0.0.1:%%DEAD_PORT%%;
        }
        location /outer/ {
            intermission nest;
            intermission_on_failure hold;
            intermission_max_time 2s;
            proxy_pass http://127.0.0.1:%%DEAD_PORT%%;
            location /outer/inner/ {
                proxy_pass http://127.0.0.1:%%DEAD_PORT%%;
            }
        }
        location /one/dead/ {
            intermission one;
            intermission_on_failure hold interval=2s;
            intermission_max_time 6s;
            proxy_pass http://127.0.0.1:%%DEAD_PORT%%;
        }
        location /one/live/ {
            intermission one;
            intermission_on_failure hold interval=2s;
            proxy_pass http://127.0.0.1:%%ONEBACKEND_PORT%%;
        }
    }
    server {
        listen 127.0.0.1:%%H2_PORT%% http2;
        location /h2/ {
            intermission h2;
            intermission_on_failure hold;
            proxy_pass http://127.0.0.1:%%H2BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my $dead = port('DEAD_PORT');

sub delta { my ($c1, $c0, $k) = @_; ($c1->{$k} // 0) - ($c0->{$k} // 0) }

# the module's [error] lines about a scope, of @$lines (default: the whole error log)
sub scope_lines {
    my ($scope, $lines) = @_;
    return grep { /\[error\]/ && /intermission: .*scope "\Q$scope\E"/ } @{ $lines || [error_log_lines()] };
}

# the part of a log line after "intermission: " (no timestamp, pid or connection number)
sub msg { my ($l) = @_; $l =~ /intermission: (.*)/ ? $1 : '' }

# ---- (1) the backend is down: GETs and POSTs held, sent again once it is back
{
    my ($st) = http_get($port, '/warm');
    is($st, 200, '(1) backend up: answered');
    my (undef, undef, $j, $raw) = ctl('GET', 'status', 'scope=default');
    my ($s) = grep { $_->{name} eq 'default' } @{ ($j && $j->{scopes}) || [] };
    ok($s, '(1) status lists scope default') or diag($raw);
    $s ||= {};
    like($raw // '', qr/"down"\s*:\s*false/, '(1) before any failure: "down":false, a JSON boolean');
    ok(exists $s->{down_since} && !defined $s->{down_since}, '(1) down_since null');
    like($s->{down_ms} // '', qr/^\d+$/, '(1) down_ms a number');
    ok(exists $s->{last_error} && !defined $s->{last_error}, '(1) last_error null');
    for my $k (qw(failed retried gave_up went_down checks)) {
        is($s->{counters}{$k}, 0, "(1) counters.$k = 0");
    }
    my $c0 = $s->{counters} || {};

    my $bport = backend_port('BACKEND');
    stop_backend();
    my @reqs = map { ([GET => "/get/$_"], [POST => "/post/$_", "id=$_"]) } 1 .. 5;
    my @c;
    my $t_first = time;
    for my $i (0 .. $#reqs) {
        my ($m, $path, $body) = @{ $reqs[$i] };
        my $c = http_connect($port);
        $c->send_request(method => $m, path => $path, keepalive => 0,
                         (defined $body ? (body => $body, headers => ['Content-Type' =>
                             'application/x-www-form-urlencoded']) : ()));
        push @c, $c;
        if ($i == 0) {
            ok(wait_for(sub { delta(scope_counters('default'), $c0, 'failed') == 1 }),
               '(1) the first request failed and is held: counters.failed 1');
            my $s1 = scope_status('default');
            is($s1 && $s1->{down}, 0, '(1) one failure does not put the scope down');
        }
        sleep 0.02;
    }
    ok(wait_held('default', 10), '(1) all 10 held: status held 10');
    ok(wait_down('default', $INTERVAL + 1), '(1) a trial failed: the scope is down');
    my $left = 1.5 - (time - $t_first);
    ok(none_readable($left > 0 ? $left : 0, @c), '(1) none answered within 1.5 s');

    ($st, undef, $j, $raw) = ctl('GET', 'status', 'scope=default');
    ($s) = grep { $_->{name} eq 'default' } @{ ($j && $j->{scopes}) || [] };
    $s ||= {};
    like($raw // '', qr/"down"\s*:\s*true/, '(1) status: "down":true');
    my $since = rfc3339_epoch($s->{down_since});
    ok(defined $since, '(1) down_since is an RFC 3339 time') or diag($raw);
    ok(defined $since && $since >= $t_first - 1 && $since <= time + 1,
       '(1) down_since: after the first failure');
    ok(defined $since && ($s->{down_ms} // '') =~ /^\d+$/
       && abs($since + $s->{down_ms} / 1000 - time) < 1, '(1) down_ms: the time since down_since')
        or diag($raw);
    ok(defined $s->{last_error} && !ref $s->{last_error} && length $s->{last_error},
       '(1) last_error says what failed') or diag($raw);
    note('last_error: ' . ($s->{last_error} // 'null'));
    my $c1 = $s->{counters} || {};
    cmp_ok(delta($c1, $c0, 'failed'), '>=', 10, '(1) counters.failed >= 10');
    is(delta($c1, $c0, 'went_down'), 1, '(1) counters.went_down 1');
    cmp_ok(delta($c1, $c0, 'checks'), '>=', 1, '(1) counters.checks >= 1 (the trial that failed)');

    sleep 2.5 * $INTERVAL;
    my $k = delta(scope_counters('default'), $c1, 'checks');
    cmp_ok($k, '>=', 1, '(1) trials go on while down');
    cmp_ok($k, '<=', 6, '(1) ... about one per interval, not a loop') or diag("$k trials in 2.5 s");
    ok(none_readable(0, @c), '(1) still none answered');
    my @lines = error_log_lines();
    ok(scalar(grep { msg($_) =~ /\bdown\b/i } scope_lines('default', \@lines)),
       '(1) error log: an [error] line says the scope went down')
        or diag(join "\n", grep { /intermission/ } @lines);

    start_backend(port => $bport, keep_log => 1);
    my $t_up = time;
    my @r = read_responses($INTERVAL + 2, @c);
    for my $i (0 .. $#reqs) {
        is($r[$i] && $r[$i][0], 200, "(1) $reqs[$i][0] $reqs[$i][1]: answered 200 once the backend is back");
    }
    my $last = max(map { $_->[3] } grep { $_ } @r);
    ok(defined $last && $last - $t_up <= ($INTERVAL + 2) * slow(),
       '(1) ... within interval + 2 s of the restart')
        or diag(sprintf('last answer %.3f s after the restart', ($last // time) - $t_up));
    $_->close for @c;

    my @log = grep { $_->{uri} =~ m{^/(?:get|post)/\d+$} } backend_log();
    my %n;
    $n{ $_->{uri} }++ for @log;
    is_deeply(\%n, { map { ($_->[1] => 1) } @reqs }, '(1) each request reached the backend exactly once')
        or diag(explain(\%n));
    my %want = map { ($_->[1] => $_) } @reqs;
    for my $rec (@log) {
        my ($m, $path, $body) = @{ $want{ $rec->{uri} } || next };
        is($rec->{method}, $m, "(1) $path: method $m");
        next unless defined $body;
        is($rec->{len}, length $body, "(1) $path: body length");
        is($rec->{md5}, md5_hex($body), "(1) $path: body md5 (id)");
    }
    is_deeply([map { $_->{uri} } @log], [map { $_->[1] } @reqs], '(1) in arrival order');

    ok(wait_down('default', 2, 0), '(1) status: down false');
    $s = scope_status('default') || {};
    ok(exists $s->{down_since} && !defined $s->{down_since}, '(1) down_since null again');
    is($s->{held}, 0, '(1) held 0');
    my $c2 = $s->{counters} || {};
    is(delta($c2, $c0, 'retried'), 10, '(1) counters.retried 10: every one held');
    cmp_ok(delta($c2, $c0, 'failed'), '>=', 10, '(1) counters.failed still >= 10');
    is(delta($c2, $c0, 'gave_up'), 0, '(1) counters.gave_up 0');
    is(delta($c2, $c0, 'went_down'), 1, '(1) counters.went_down still 1');

    my %result;
    ok(wait_for(sub {
        %result = map { /^(\S+) (\S*) (\d+)$/ ? ($1 => "$2 $3") : () } file_lines('access.log');
        !grep { !defined $result{ $_->[1] } } @reqs;
    }), '(1) access log: a line for each request');
    is_deeply({ map { ($_->[1] => $result{ $_->[1] }) } @reqs }, { map { ($_->[1] => 'retried 200') } @reqs },
              '(1) $intermission_result "retried" for each');

    my @all = error_log_lines();
    my @after = scope_lines('default', [@all[@lines .. $#all]]);
    my @back = grep { my $m = msg($_); $m =~ /\b10\b/ && $m =~ /\d+(?:\.\d+)?\s*(?:ms|s)\b/ } @after;
    ok(scalar @back, '(1) error log: an [error] line after the restart says the scope is back, '
                   . 'how long it was down and the 10 it held')
        or diag(join "\n", grep { /intermission/ } error_log_lines());
    note("back line: $back[0]") if @back;
}

# ---- (2) steady load, the backend killed with SIGKILL and started again 2 s later
{
    my $bport = backend_port('LOADBACKEND');
    my $c0 = scope_counters('load');
    my (@pending, @done);

    # read what is answered (or closed) within $timeout (0: without waiting)
    my $collect = sub {
        my ($timeout) = @_;
        return unless @pending;
        my @r = read_responses($timeout, map { $_->{c} } @pending);
        my @still;
        for my $i (0 .. $#pending) {
            my $p = $pending[$i];
            if ($r[$i]) { $p->{status} = $r[$i][0]; push @done, $p; $p->{c}->close }
            elsif ($p->{c}->eof) { $p->{status} = 'closed'; push @done, $p; $p->{c}->close }
            else { push @still, $p }
        }
        @pending = @still;
    };

    my ($n, $killed, $restarted, $in_down) = (0, undef, undef, 0);
    my $t0 = time;
    while (time - $t0 < 6) {
        if (!$killed && time - $t0 >= 2) {
            $collect->(2);
            is(scalar @pending, 0, '(2) what was in flight before the kill is answered');
            kill_backend('LOADBACKEND', 'KILL');
            $killed = time;
        }
        if ($killed && !$restarted && time - $killed >= 2) {
            start_backend(name => 'LOADBACKEND', port => $bport, keep_log => 1);
            $restarted = time;
        }
        $n++;
        my $post = $n % 2 == 0;
        my $c = http_connect($port);
        $c->send_request(keepalive => 0, $post
            ? (method => 'POST', path => "/load/post/$n", body => "id=$n",
               headers => ['Content-Type' => 'application/x-www-form-urlencoded'])
            : (method => 'GET', path => "/load/get/$n"));
        push @pending, { c => $c, n => $n, post => $post };
        $in_down++ if $killed && !$restarted;
        $collect->(0);
        sleep 1 / 6;
    }
    $collect->($INTERVAL + 3);
    cmp_ok($in_down, '>=', 8, "(2) $in_down requests sent while the backend was down");
    is(scalar @pending, 0, "(2) every one of the $n requests answered");
    my @bad = grep { $_->{status} ne '200' } @done;
    is(scalar @bad, 0, '(2) 0 errors at the client: every request answered 200')
        or diag(join ', ', map { ($_->{post} ? 'POST' : 'GET') . " $_->{n}: $_->{status}" } @bad);

    my %seen;
    push @{ $seen{ $_->{uri} } }, $_ for grep { $_->{uri} =~ m{^/load/} } backend_log('LOADBACKEND');
    my (@missing, @twice, @wrong);
    for my $i (1 .. $n) {
        my $post = $i % 2 == 0;
        my $uri = $post ? "/load/post/$i" : "/load/get/$i";
        my $recs = $seen{$uri} || [];
        push @missing, $uri if !@$recs;
        push @twice, $uri if @$recs > 1;
        push @wrong, $uri if grep { $_->{method} ne ($post ? 'POST' : 'GET')
                                    || ($post && $_->{md5} ne md5_hex("id=$i")) } @$recs;
    }
    is("@missing", '', '(2) every request reached the backend');
    is("@twice", '', '(2) none of them twice (each POST id exactly once)');
    is("@wrong", '', '(2) each with its method, and each POST with its body');

    ok(wait_down('load', 2, 0), '(2) the scope is not down at the end');
    my $c1 = scope_counters('load');
    cmp_ok(delta($c1, $c0, 'failed'), '>', 0, '(2) counters.failed > 0');
    is(delta($c1, $c0, 'retried'), delta($c1, $c0, 'failed'), '(2) counters.retried = failed');
    cmp_ok(delta($c1, $c0, 'went_down'), '<=', 1, '(2) counters.went_down at most 1');
    is(delta($c1, $c0, 'gave_up'), 0, '(2) counters.gave_up 0');
}

# ---- (3) two servers, one dead: nginx's next upstream goes first, nothing is held
{
    my $c0 = scope_counters('pair');
    my @down;
    for my $i (1 .. 6) {
        my $t = time;
        my ($st) = http_get($port, "/pair/$i", timeout => 3);
        is($st, 200, "(3) /pair/$i answered 200");
        cmp_ok(time - $t, '<', slow(), "(3) /pair/$i at once");
        my $s = scope_status('pair');
        push @down, $i if !$s || $s->{down};
    }
    is("@down", '', '(3) the scope is never down');
    ok(scalar(error_log_lines(qr{connect\(\) failed.*upstream: "http://127\.0\.0\.1:$dead/pair/})),
       '(3) the dead server was tried (nginx retried on the live one)');
    sleep $INTERVAL + 0.5;
    my $s = scope_status('pair') || {};
    is($s->{down}, 0, '(3) not down an interval later');
    is($s->{held}, 0, '(3) held 0');
    is(delta($s->{counters}, $c0, 'failed'), 0, '(3) counters.failed 0');
    is(delta($s->{counters}, $c0, 'checks'), 0, '(3) counters.checks 0');
}

# ---- (8) no live upstreams: nginx connects nowhere, the request is held
{
    my $bport = backend_port('NOLIVEBACKEND');
    stop_backend('NOLIVEBACKEND');
    my @c = (send_only($port, '/nolive/1'));
    ok(wait_held('nolive', 1), '(8) /nolive/1 tried both servers and is held');
    push @c, map { send_only($port, "/nolive/$_") } 2 .. 3;
    ok(wait_for(sub { error_log_lines(qr{no live upstreams.*request: "GET /nolive/}) }, 3),
       '(8) nginx found no live upstream for a later request');
    ok(wait_held('nolive', 3), '(8) all 3 held');
    ok(none_readable(0.5, @c), '(8) none answered 502');
    start_backend(name => 'NOLIVEBACKEND', port => $bport, keep_log => 1);
    my @r = read_responses(3 + $INTERVAL + 3, @c);
    is(scalar(grep { $_ && $_->[0] == 200 } @r), 3, '(8) all 3 answered 200 once a server is back')
        or diag(join ' ', map { $_ ? $_->[0] : 'none' } @r);
    $_->close for @c;
    my %n;
    $n{ $_->{uri} }++ for grep { $_->{uri} =~ m{^/nolive/} } backend_log('NOLIVEBACKEND');
    is_deeply(\%n, { map { ("/nolive/$_" => 1) } 1 .. 3 }, '(8) each reached it once');
    ok(wait_down('nolive', 2, 0), '(8) up');
}

# ---- (4) a body that is not buffered is not held
{
    my $c0 = scope_counters('unbuf');
    my $t = time;
    # nginx keeps a body that came whole with the request (it is then buffered after all,
    # and sent again): this one is still arriving when the attempt fails.
    my $c = http_connect($port);
    $c->send_raw("POST /unbuf/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                 . "Content-Length: 100000\r\n\r\nid=unbuf1");
    my ($st) = $c->read_response(3);
    is($st, 502, '(4) proxy_request_buffering off: a POST whose body is still arriving gets 502');
    cmp_ok(time - $t, '<', slow(), '(4) ... at once');
    my $s = scope_status('unbuf') || {};
    is(delta($s->{counters}, $c0, 'gave_up'), 1, '(4) counters.gave_up 1');
    is(delta($s->{counters}, $c0, 'failed'), 0, '(4) counters.failed 0');
    is($s->{held}, 0, '(4) held 0');
}

# ---- (5) a nested location does not inherit intermission_on_failure
{
    my $c0 = scope_counters('nest');
    my $t = time;
    my ($st) = http_get($port, '/outer/inner/1', timeout => 3);
    is($st, 502, '(5) the nested location (no intermission_on_failure of its own): 502');
    cmp_ok(time - $t, '<', slow(), '(5) ... at once');
    is(delta(scope_counters('nest'), $c0, 'failed'), 0, '(5) ... not counted failed');
    my $c = send_only($port, '/outer/1');
    ok(none_readable(1, $c), '(5) the outer location holds');
    my ($r) = read_responses(4, $c);
    is($r && $r->[0], 502, '(5) ... until its max_time (2s): 502');
    $c->close;
}

# ---- (6) one URL fails while the backend is fine
{
    my $c0 = scope_counters('one');
    my $t0 = time;
    my $d = send_only($port, '/one/dead/1');
    ok(wait_for(sub { delta(scope_counters('one'), $c0, 'failed') == 1 }), '(6) /one/dead/1 failed and is held');
    my @ms;
    for my $i (1 .. 3) {
        my $t = time;
        my ($st) = http_get($port, "/one/live/$i", timeout => 2);
        is($st, 200, "(6) /one/live/$i answered 200 while /one/dead/1 is held");
        push @ms, time - $t;
    }
    cmp_ok(max(@ms), '<', 0.5 * slow(), '(6) ... each at once');
    note(sprintf('the /one/live/ requests were answered within %.3f s of /one/dead/1', time - $t0));
    my $s = scope_status('one') || {};
    is($s->{down}, 0, '(6) the scope is not down');
    ok(none_readable(0, $d), '(6) /one/dead/1 still held');

    ok(wait_down('one', 2 + 1), '(6) the trial of /one/dead/1 failed: the scope is down');
    my $h = send_only($port, '/one/live/held');
    ok(none_readable(1, $h), '(6) once down, a /one/live/ request is held too');
    is(scalar(grep { $_->{uri} eq '/one/live/held' } backend_log('ONEBACKEND')), 0,
       '(6) ... and not sent to the backend');
    my $checks = delta(scope_counters('one'), $c0, 'checks');
    cmp_ok(connect_failures('/one/dead/1'), '<=', 1 + $checks + 3, '(6) /one/dead/1 was not re-sent in a loop')
        or diag(connect_failures('/one/dead/1') . " connect failures, $checks trials");

    my ($rd) = read_responses(8, $d);
    is($rd && $rd->[0], 502, '(6) /one/dead/1: 502 at its max_time (6s)');
    ok($rd && $rd->[3] - $t0 >= 5.5, '(6) ... not before 5.5 s')
        or diag(sprintf('after %.3f s', $rd ? $rd->[3] - $t0 : -1));
    my ($rh) = read_responses(2 + 2, $h);
    is($rh && $rh->[0], 200, '(6) then the trial of the held /one/live/ request succeeds: 200');
    ok(wait_down('one', 2, 0), '(6) the scope is up again');
    is(scalar(grep { $_->{uri} eq '/one/live/held' } backend_log('ONEBACKEND')), 1,
       '(6) /one/live/held reached the backend once');
    $d->close;
    $h->close;
}

# ---- (7) HTTP/2
SKIP: {
    skip 'nghttp (nghttp2-client) not installed', 8 unless -x $NGHTTP;
    my $base = 'http://127.0.0.1:' . port('H2_PORT');
    # codes from `nghttp -s` statistics: { path => status }
    my $codes = sub {
        my ($out) = @_;
        my %c;
        $c{$2} = $1 while ($out // '') =~ /^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d{3})\s+\S+\s+(\S+)\s*$/mg;
        return \%c;
    };
    my $bport = backend_port('H2BACKEND');
    stop_backend('H2BACKEND');
    my $body = 'id=h2post';
    my $file = write_file('h2-body', $body);
    my $g = bg_start($NGHTTP, '-n', '-s', "$base/h2/get");
    my $p = bg_start($NGHTTP, '-n', '-s', '-d', $file, "$base/h2/post");
    ok(wait_held('h2', 2), '(7) a GET and a POST over HTTP/2 held');
    sleep 1;
    my @wg = bg_wait($g, 0);
    my @wp = bg_wait($p, 0);
    ok(!@wg && !@wp, '(7) neither answered');
    start_backend(name => 'H2BACKEND', port => $bport, keep_log => 1);
    my ($rc, $out) = bg_wait($g, $INTERVAL + 3);
    is($rc, 0, '(7) the GET: nghttp exits 0') or diag($out // 'still running');
    is_deeply($codes->($out), { '/h2/get' => 200 }, '(7) the GET: 200') or diag($out);
    ($rc, $out) = bg_wait($p, $INTERVAL + 3);
    is($rc, 0, '(7) the POST: nghttp exits 0') or diag($out // 'still running');
    is_deeply($codes->($out), { '/h2/post' => 200 }, '(7) the POST: 200') or diag($out);
    my @log = grep { $_->{uri} eq '/h2/post' } backend_log('H2BACKEND');
    is(scalar @log, 1, '(7) the POST reached the backend once');
    ok(@log && $log[0]{method} eq 'POST' && $log[0]{md5} eq md5_hex($body),
       '(7) ... as a POST, with its body') or diag(explain(\@log));
}

finish();
