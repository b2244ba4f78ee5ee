#!/usr/bin/perl
# bad_control.t: the control endpoint's error handling and small features.
# Wrong method -> 405 with Allow; unknown command or scope -> 404; malformed arguments
# -> 400; every error is a JSON body {"error": ...} with Content-Type application/json,
# and leaves the state unchanged. HEAD status -> 200 without body; the last URI segment
# is the command; the pause/resume aliases; PUT works like POST; enabling an already
# paused scope reports changed=false (and disabling a resumed one too).
use strict;
use warnings;
use Test::More;
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /other/ {
            intermission other;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

sub allow_set { my ($v) = @_; join ',', sort map { uc } split /\s*,\s*/, ($v // '') }

sub snapshot {
    my $j = ctl_status() or return 'status failed';
    return join ';', map { "$_->{name}:" . ($_->{paused} ? 1 : 0) . ":$_->{held}" }
                     sort { $a->{name} cmp $b->{name} } @{ $j->{scopes} || [] };
}

my $initial = snapshot();
is($initial, 'default:0:0;other:0:0', 'initial state: nothing paused');

my @errors = (
    # method, command, args, status, allow
    ['GET',    'enable',  undef,                         405, 'POST,PUT'],
    ['GET',    'disable', undef,                         405, 'POST,PUT'],
    ['GET',    'pause',   undef,                         405, 'POST,PUT'],
    ['DELETE', 'pause',   undef,                         405, 'POST,PUT'],
    ['DELETE', 'resume',  undef,                         405, 'POST,PUT'],
    ['POST',   'status',  undef,                         405, 'GET,HEAD'],
    ['PUT',    'status',  undef,                         405, 'GET,HEAD'],
    ['GET',    'bogus',   undef,                         404],
    ['POST',   'bogus',   undef,                         404],
    ['POST',   'enable',  'scope=nope',                  404],
    ['POST',   'disable', 'scope=nope',                  404],
    ['GET',    'status',  'scope=nope',                  404],
    ['POST',   'enable',  'scope=bad!name',              400],
    ['POST',   'enable',  'scope=bad%2Fname',            400],
    ['POST',   'enable',  'scope=' . ('x' x 65),         400],
    ['POST',   'enable',  'scope=',                      400],
    ['POST',   'enable',  'foo=1',                       400],
    ['POST',   'enable',  'scope=default&scope=default', 400],
    ['POST',   'enable',  'scope',                       400],
    ['POST',   'enable',  'scope=%zz',                   400],
    ['POST',   'enable',  'scope=%4',                    400],
    ['GET',    'status',  'foo=1',                       400],
);

for my $e (@errors) {
    my ($m, $cmd, $args, $want, $allow) = @$e;
    my $name = "$m /ctl/$cmd" . (defined $args ? "?$args" : '');
    my ($st, $h, $j, $body) = ctl($m, $cmd, $args);
    is($st, $want, "$name -> $want") or diag("body: " . ($body // ''));
    like($h->{'content-type'} // '', qr{^application/json}, "$name: JSON content type");
    ok(ref $j eq 'HASH' && defined $j->{error} && length $j->{error}, "$name: body has an \"error\" key")
        or diag("body: " . ($body // ''));
    if ($allow) {
        is(allow_set($h->{allow}), $allow, "$name: Allow header lists $allow");
    }
    is(snapshot(), $initial, "$name: state unchanged");
}

# HEAD status: 200, no body
{
    my $c = http_connect(port('CTL_PORT'));
    $c->send_request(method => 'HEAD', path => '/ctl/status', keepalive => 0);
    my ($st, $h, $body) = $c->read_response(5);
    is($st, 200, 'HEAD status -> 200');
    like($h->{'content-type'} // '', qr{^application/json}, 'HEAD status: JSON content type');
    ok($c->closed(5), 'HEAD status: connection closed');
    is($c->pending_bytes + length($body // ''), 0, 'HEAD status: no body');
    $c->close;
}

# GET status: JSON shape
{
    my ($st, $h, $j, $body) = ctl('GET', 'status');
    is($st, 200, 'GET status -> 200');
    like($h->{'content-type'} // '', qr{^application/json}, 'GET status: JSON content type');
    my ($d) = grep { $_->{name} eq 'default' } @{ $j->{scopes} || [] };
    ok($d, 'status has the default scope');
    for my $k (qw(name paused paused_since paused_ms held oldest_held_ms counters)) {
        ok(exists $d->{$k}, "status scope has \"$k\"");
    }
    for my $k (qw(held released aborted)) {
        ok(exists $d->{counters}{$k}, "status counters have \"$k\"");
    }
    like($body, qr/"paused"\s*:\s*false/, 'paused is a JSON boolean');
    like($body, qr/"paused_since"\s*:\s*null/, 'paused_since is null when not paused');
}

# the last URI segment is the command
{
    my ($st, undef, $j) = ctl('GET', 'status', undef, path => '/ctl/some/thing/status');
    is($st, 200, 'GET /ctl/some/thing/status -> 200');
    ok($j && ref $j->{scopes} eq 'ARRAY', '... and it is the status');
}

# pause / resume aliases, changed flags, PUT
{
    my ($st, undef, $j) = ctl('POST', 'pause', 'scope=default');
    is($st, 200, 'POST pause -> 200');
    is($j->{action}, 'pause', 'pause: action pause');
    is_deeply([map { [$_->{name}, $_->{paused}, $_->{changed}] } @{ $j->{scopes} }],
              [['default', 1, 1]], 'pause: default paused, changed=true');
    is(snapshot(), 'default:1:0;other:0:0', 'pause: only default paused');

    ($st, undef, $j) = ctl('POST', 'enable', 'scope=default');
    is($st, 200, 'POST enable again -> 200');
    is($j->{scopes}[0]{changed}, 0, 'enable of a paused scope: changed=false');
    is($j->{scopes}[0]{paused}, 1, '... still paused');

    ($st, undef, $j) = ctl('POST', 'resume', 'scope=default');
    is($st, 200, 'POST resume -> 200');
    is($j->{action}, 'resume', 'resume: action resume');
    is_deeply([map { [$_->{name}, $_->{paused}, $_->{changed}, $_->{released}] } @{ $j->{scopes} }],
              [['default', 0, 1, 0]], 'resume: default resumed, changed=true, released=0');

    ($st, undef, $j) = ctl('POST', 'disable', 'scope=default');
    is($st, 200, 'POST disable again -> 200');
    is($j->{scopes}[0]{changed}, 0, 'disable of a running scope: changed=false');

    ($st, undef, $j) = ctl('PUT', 'enable', 'scope=other');
    is($st, 200, 'PUT enable?scope=other -> 200');
    is(snapshot(), 'default:0:0;other:1:0', 'PUT enable: other paused');
    ($st, undef, $j) = ctl('PUT', 'disable');
    is($st, 200, 'PUT disable -> 200');
    my %ch = map { $_->{name} => $_->{changed} } @{ $j->{scopes} || [] };
    is_deeply(\%ch, { default => 0, other => 1 }, 'disable (all): changed only where it was paused');
    is(snapshot(), $initial, 'nothing paused at the end');
}

# errors while paused leave the pause in place
{
    is(scalar ctl('POST', 'enable'), 200, 'pause all');
    my $paused = snapshot();
    is($paused, 'default:1:0;other:1:0', 'both paused');
    is(scalar ctl('POST', 'disable', 'scope=bad!'), 400, 'bad disable while paused -> 400');
    is(scalar ctl('GET', 'disable'), 405, 'GET disable while paused -> 405');
    is(snapshot(), $paused, 'still paused after the errors');
    is(scalar ctl('POST', 'disable'), 200, 'resume all');
    is(snapshot(), $initial, 'nothing paused');
}

finish();
