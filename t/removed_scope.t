#!/usr/bin/perl
# removed_scope.t: a reload that removes a scope does not strand it. The shared zone is the
# source of truth: a scope that is no longer configured but is still paused, or still holds
# requests (in the old workers), is listed by status and can be resumed.
# Scopes a (/a/) and b (/b/); intermission_max_time 20s, so that a request released by a
# resume (at once) is told apart from one that comes out at max_time.
# - Pause b, hold one request in b, reload with a configuration without b: status lists b
#   (paused true, held 1); `POST resume?scope=b` answers 200 with released 1, and the held
#   request is answered 200 by the backend at once.
# - The same, resumed by a plain `POST resume` (no scope): b is resumed too.
# - Pause b, reload without b, reload with b: b is still paused (never resumed), a request
#   to /b/ is held; after a resume, a reload without b and then with b comes up unpaused.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $WITH_B = <<'CONF';
http {
    intermission_max_time 20s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /a/ {
            intermission a;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /b/ {
            intermission b;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

(my $WITHOUT_B = $WITH_B) =~ s{        location /b/ \{.*?\n        \}\n}{}s;
die "no /b/ location to remove" if $WITHOUT_B =~ m{/b/};

sub at_backend { my ($uri) = @_; scalar grep { $_->{uri} eq $uri } backend_log() }

sub change_of {
    my ($j, $name) = @_;
    my ($c) = grep { $_->{name} eq $name } @{ ($j && $j->{scopes}) || [] };
    return $c;
}

start_nginx($WITH_B);
my $port = port('PORT');

# pause b, hold one request in b, reload without b; -> the held connection
sub strand {
    my ($tag) = @_;
    is(scalar ctl('POST', 'pause', 'scope=b'), 200, "$tag: b paused");
    my $c = http_connect($port);
    $c->send_request(path => "/b/$tag", keepalive => 0);
    ok(wait_held('b', 1), "$tag: one request held in b");
    reload_nginx($WITHOUT_B);
    my $s = scope_status('b');
    ok($s, "$tag: after a reload without b, status still lists b") or diag(explain(ctl_status()));
    is($s && $s->{paused}, 1, "$tag: ... paused true");
    is($s && $s->{held}, 1, "$tag: ... held 1");
    ok(none_readable(0.2, $c), "$tag: the request is still held");
    return $c;
}

# ---- resume?scope=b after b left the configuration
{
    my $c = strand('named');
    my $t0 = time;
    my ($st, undef, $j, $raw) = ctl('POST', 'resume', 'scope=b');
    is($st, 200, 'resume?scope=b answers 200') or diag($raw);
    is(change_of($j, 'b') && change_of($j, 'b')->{released}, 1, '... released 1');
    my ($rst) = $c->read_response(3);
    is($rst, 200, 'the held request is answered 200 at once (not at max_time)');
    my $after = time - $t0;
    cmp_ok($after, '<', 3, sprintf('... %.2f s after the resume', $after));
    is(at_backend('/b/named'), 1, '... by the backend, once');
    my $s = scope_status('b');
    ok(!$s || !$s->{paused}, 'b is no longer paused');
    $c->close;
}

# ---- a plain resume resumes b too
{
    reload_nginx($WITH_B);
    my $c = strand('plain');
    my $t0 = time;
    my ($st, undef, $j, $raw) = ctl('POST', 'resume');
    is($st, 200, 'plain resume answers 200');
    my $cb = change_of($j, 'b');
    ok($cb, '... listing b') or diag($raw);
    is($cb && $cb->{released}, 1, '... b released 1');
    my ($rst) = $c->read_response(3);
    is($rst, 200, 'the held request is answered 200 at once (not at max_time)');
    cmp_ok(time - $t0, '<', 3, '... within 3 s of the resume');
    is(at_backend('/b/plain'), 1, '... by the backend, once');
    my $s = scope_status('b');
    ok(!$s || !$s->{paused}, 'b is no longer paused');
    $c->close;
}

# ---- a pause survives a reload without the scope and one with it again
{
    reload_nginx($WITH_B);
    my $s0 = scope_status('b');
    ok($s0 && !$s0->{paused}, 'b configured again, running');
    is(scalar ctl('POST', 'pause', 'scope=b'), 200, 'b paused');
    reload_nginx($WITHOUT_B);
    reload_nginx($WITH_B);
    my $s = scope_status('b');
    is($s && $s->{paused}, 1, 'after reloads without b and with b again: b still paused');
    my $c = http_connect($port);
    $c->send_request(path => '/b/again', keepalive => 0);
    ok(wait_held('b', 1), '... a request to /b/ is held');
    my (undef, undef, $j) = ctl('POST', 'resume', 'scope=b');
    is($j && $j->{scopes}[0]{released}, 1, 'resume b: released 1');
    my ($rst) = $c->read_response(5);
    is($rst, 200, '... answered 200');
    $c->close;

    reload_nginx($WITHOUT_B);
    reload_nginx($WITH_B);
    $s = scope_status('b');
    ok($s && !$s->{paused}, 'after a resume, reloads without b and with b again: b comes up unpaused');
    my ($st) = http_get($port, '/b/free', timeout => 3);
    is($st, 200, '... a request to /b/ is answered at once');
}

finish();
