#!/usr/bin/perl
# http2.t: HTTP/2 (h2c, prior knowledge, `listen ... http2;`) with nghttp as the client.
# - Not paused: two concurrent streams on one connection are answered 200.
# - Paused: three streams on ONE connection are all held (held=3, none at the backend); a
#   stream to a location without intermission on the same connection is answered
#   meanwhile (reaches the backend while the others are held). Resume -> all three answered
#   200 and reach the backend, each once, from the same nginx connection ($connection).
# - Paused: a connection with two held streams is closed by the client (nghttp killed):
#   aborted grows by 2, held=0; resume releases nothing and the backend never sees them.
# - After a resume the released streams were in flight until they ended: drain answers.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

my $NGHTTP = '/usr/bin/nghttp';
plan skip_all => 'nghttp (nghttp2-client) not installed' unless -x $NGHTTP;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%% http2;
        location / {
            intermission on;
            proxy_set_header X-Conn $connection;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /free/ {
            proxy_set_header X-Conn $connection;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $base = 'http://127.0.0.1:' . port('PORT');

# codes from `nghttp -s` statistics: { path => status }
sub codes {
    my ($out) = @_;
    my %c;
    $c{$2} = $1 while $out =~ /^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d{3})\s+\S+\s+(\S+)\s*$/mg;
    return \%c;
}

sub nghttp { bg_start($NGHTTP, '-n', '-s', @_) }

sub counters { my $s = scope_status('default'); $s ? $s->{counters} : {} }

# ---- not paused
{
    my $h = nghttp("$base/pre/1", "$base/pre/2");
    my ($rc, $out) = bg_wait($h, 10);
    is($rc, 0, 'not paused: nghttp exits 0') or diag($out // 'still running');
    is_deeply(codes($out // ''), { '/pre/1' => 200, '/pre/2' => 200 }, 'not paused: both streams 200')
        or diag($out);
}

# ---- paused: streams of one connection held, resume answers all
{
    is(scalar ctl('POST', 'enable'), 200, 'paused');
    my $h = nghttp(map { "$base/h2/$_" } 1 .. 3);
    ok(wait_held('default', 3), 'three streams of one connection held');
    sleep 0.2;
    is(scalar(grep { $_->{uri} =~ m{^/h2/} } backend_log()), 0, 'backend saw none of them');
    my @w = bg_wait($h, 0);
    ok(!@w, 'nghttp still waiting');

    # another connection: a stream to a location without intermission is answered meanwhile
    my $f = nghttp("$base/free/1", "$base/h2/4");
    ok(wait_for(sub { grep { $_->{uri} eq '/free/1' } backend_log() }), 'free stream reached the backend while paused');
    ok(wait_held('default', 4), 'the other stream of that connection is held');

    my (undef, undef, $j) = ctl('POST', 'disable');
    is($j && $j->{scopes}[0]{released}, 4, 'resume released 4 streams');
    my ($rc, $out) = bg_wait($h, 10);
    is($rc, 0, 'nghttp exits 0 after the resume') or diag($out // 'still running');
    is_deeply(codes($out // ''), { map { ("/h2/$_" => 200) } 1 .. 3 }, 'all three streams answered 200')
        or diag($out);
    ($rc, $out) = bg_wait($f, 10);
    is($rc, 0, 'second nghttp exits 0');
    is_deeply(codes($out // ''), { '/free/1' => 200, '/h2/4' => 200 }, 'free and released stream 200')
        or diag($out);

    my @log = grep { $_->{uri} =~ m{^/h2/[123]$} } backend_log();
    is_deeply([sort map { $_->{uri} } @log], [map { "/h2/$_" } 1 .. 3], 'each of the three reached the backend once');
    my %xconn = map { ($_->{xconn} // 'none') => 1 } @log;
    is(scalar(keys %xconn), 1, 'all three came from one nginx connection') or diag(explain(\%xconn));
    my ($st, undef, $dj) = ctl('GET', 'drain', 'timeout=5s');
    is($st, 200, 'drain after the released streams ended');
    is((scope_status('default') || {})->{inflight}, 0, 'inflight=0');
}

# ---- paused: the connection closes while its streams are held
{
    my $c0 = counters();
    is(scalar ctl('POST', 'enable'), 200, 'paused again');
    my $h = nghttp("$base/gone/1", "$base/gone/2");
    ok(wait_held('default', 2), 'two streams held');
    bg_kill($h, 'KILL');
    my $c;
    ok(wait_for(sub { $c = counters(); ($c->{aborted} // 0) - ($c0->{aborted} // 0) == 2 && (scope_status('default') || {})->{held} == 0 }),
       'connection closed: aborted grew by 2, held=0') or diag(explain($c));
    my (undef, undef, $j) = ctl('POST', 'disable');
    is($j && $j->{scopes}[0]{released}, 0, 'resume released nothing');
    sleep 0.3;
    is(scalar(grep { $_->{uri} =~ m{^/gone/} } backend_log()), 0, 'backend never saw the aborted streams');
    is((scope_status('default') || {})->{inflight}, 0, 'aborted streams are not in flight');
}

finish();
