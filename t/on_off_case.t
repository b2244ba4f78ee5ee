#!/usr/bin/perl
# on_off_case.t: the values on and off of `intermission` ignore case, as nginx's own flags
# do: `Off`, `OFF`, `oFf` mean off; `On`, `ON` mean the scope default. None of them is a
# scope name, so the control endpoint refuses them as names.
# The server has `intermission on;`; its locations say Off, OFF, oFf, On, ON, or inherit.
# - default paused: the Off/OFF/oFf locations answer at once; the On/ON locations and the
#   inheriting one are held (in default: held 3); the resume releases them.
# - every scope paused (a plain pause): the Off/OFF/oFf locations still answer at once.
# - status lists no scope named Off, OFF, oFf, On or ON (only default).
# - `?scope=ON`, `?scope=On`, `?scope=off` and `?scope=OFF` on the control endpoint answer
#   400 (a reserved name) for pause, resume, status and drain, and change nothing.
# - nginx -t accepts each spelling.
use strict;
use warnings;
use Test::More;
use Intermission::Test;

my $CONF = <<'CONF';
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        intermission on;
        location /off1/ { intermission Off; proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
        location /off2/ { intermission OFF; proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
        location /off3/ { intermission oFf; proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
        location /on1/  { intermission On;  proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
        location /on2/  { intermission ON;  proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
        location /def/  { proxy_pass http://127.0.0.1:%%BACKEND_PORT%%; }
    }
    %%CONTROL_SERVER%%
}
CONF

{
    my ($rc, $out) = nginx_t($CONF);
    is($rc, 0, 'nginx -t accepts Off, OFF, oFf, On, ON') or diag($out);
}

start_nginx($CONF);
my $port = port('PORT');

my @OFF = qw(/off1/ /off2/ /off3/);
my @HELD = qw(/on1/ /on2/ /def/);
my %SPELL = ('/off1/' => 'Off', '/off2/' => 'OFF', '/off3/' => 'oFf', '/on1/' => 'On', '/on2/' => 'ON',
             '/def/' => 'inherited on');

sub names { my $j = ctl_status(); [sort map { $_->{name} } @{ ($j && $j->{scopes}) || [] }] }

sub state {
    my $j = ctl_status();
    return join ',', map { "$_->{name}=" . ($_->{paused} ? 'paused' : 'running') }
        sort { $a->{name} cmp $b->{name} } @{ ($j && $j->{scopes}) || [] };
}

is_deeply(names(), ['default'], 'status lists only the scope default (no Off/OFF/oFf/On/ON)')
    or diag(explain(names()));

# ---- default paused
{
    is(scalar ctl('POST', 'pause', 'scope=default'), 200, 'default paused');
    for my $p (@OFF) {
        my ($st) = http_get($port, "${p}x", timeout => 3);
        is($st, 200, "intermission $SPELL{$p}: answered at once while default is paused");
    }
    my @c;
    for my $p (@HELD) {
        my $c = http_connect($port);
        $c->send_request(path => "${p}held", keepalive => 0);
        push @c, $c;
    }
    ok(wait_held('default', 3, 3), 'intermission On, ON and the inherited on: held in default (held 3)');
    for my $i (0 .. $#HELD) {
        ok(none_readable(0.1, $c[$i]), "intermission $SPELL{$HELD[$i]}: not answered while default is paused");
    }
    my (undef, undef, $j) = ctl('POST', 'resume', 'scope=default');
    my @r = read_responses(5, @c);
    for my $i (0 .. $#HELD) {
        is($r[$i] && $r[$i][0], 200, "intermission $SPELL{$HELD[$i]}: answered 200 after the resume");
    }
    $_->close for @c;
}

# ---- every scope paused
{
    is(scalar ctl('POST', 'pause'), 200, 'every scope paused (plain pause)');
    for my $p (@OFF) {
        my ($st) = http_get($port, "${p}y", timeout => 3);
        is($st, 200, "intermission $SPELL{$p}: answered at once while every scope is paused");
    }
    is(scalar ctl('POST', 'resume'), 200, 'every scope resumed');
}

is_deeply(names(), ['default'], 'status still lists only default') or diag(explain(names()));

# ---- reserved names on the control endpoint
{
    is(scalar ctl('POST', 'pause', 'scope=default'), 200, 'default paused (to see that nothing changes)');
    my $before = state();
    my @changed;
    for my $name (qw(ON On off OFF)) {
        for my $cmd (['POST', 'pause'], ['POST', 'resume'], ['GET', 'status'], ['GET', 'drain']) {
            my ($st, undef, $j, $raw) = ctl(@$cmd, "scope=$name");
            is($st, 400, "$cmd->[0] $cmd->[1]?scope=$name: 400 (a reserved name)") or diag($raw);
            my $now = state();
            push @changed, "after $cmd->[0] $cmd->[1]?scope=$name: $now" if $now ne $before;
        }
    }
    is(scalar @changed, 0, "... and none of them changed anything (state stays $before)")
        or diag(join "\n", @changed);
    is(scalar ctl('POST', 'resume', 'scope=default'), 200, 'default resumed');
}

finish();
