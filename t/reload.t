#!/usr/bin/perl
# reload.t: a reload (SIGHUP to the master) while paused keeps the pause and loses no
# held request. Requests held by the old workers stay counted and the old workers stay
# alive holding them; new requests are held by the new workers; one resume releases old
# and new: all answered 200, each reaching the backend once, through the worker that
# held it (old pid for the first batch, new pid for the second).
use strict;
use warnings;
use Test::More;
use Intermission::Test;

my $CONF = <<'CONF';
worker_processes 2;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_set_header X-Worker $pid;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

start_nginx($CONF);
my $port = port('PORT');
my @w0 = worker_pids();
is(scalar @w0, 2, 'two workers');

my ($st) = http_get($port, '/pre');
is($st, 200, 'not paused: answered');

is(scalar ctl('POST', 'enable'), 200, 'paused');

my @old = map { http_connect($port) } 1 .. 3;
$old[$_]->send_request(path => "/old/$_", headers => ['X-Seq' => "old$_"], keepalive => 0) for 0 .. 2;
ok(wait_held('default', 3), 'three requests held before reload');

my $s = scope_status('default');
my $since = $s && $s->{paused_since};

my ($oldw, $neww) = reload_nginx();
is(scalar @$neww, 2, 'two new workers after reload');
ok(!grep({ my $o = $_; grep { $_ == $o } @$neww } @w0), 'new workers are new processes');

$s = scope_status('default');
ok($s && $s->{paused}, 'still paused after reload');
is($s && $s->{paused_since}, $since, 'paused_since unchanged by reload');
is($s && $s->{held}, 3, 'held requests of the old workers still counted');
ok(none_readable(0.2, @old), 'old requests still held');
ok(scalar(grep { kill 0, $_ } @w0) >= 1, 'an old worker is still alive, holding requests');

my @new = map { http_connect($port) } 1 .. 3;
$new[$_]->send_request(path => "/new/$_", headers => ['X-Seq' => "new$_"], keepalive => 0) for 0 .. 2;
ok(wait_held('default', 6), 'new requests held too: held=6');
ok(none_readable(0.2, @old, @new), 'nothing answered while paused');
is(scalar(grep { $_->{uri} =~ m{^/(old|new)/} } backend_log()), 0, 'backend saw nothing while paused');

my (undef, undef, $j) = ctl('POST', 'disable');
is($j && $j->{scopes}[0]{released}, 6, 'resume released=6');

my @r = read_responses(5, @old, @new);
is(scalar(grep { $_ && $_->[0] == 200 } @r), 6, 'all six answered 200');

my @log = grep { $_->{uri} =~ m{^/(old|new)/} } backend_log();
is_deeply([sort map { $_->{seq} } @log], [qw(new0 new1 new2 old0 old1 old2)],
          'backend received each of the six exactly once');
my %w0 = map { $_ => 1 } @w0;
my %wn = map { $_ => 1 } @$neww;
is(scalar(grep { $_->{seq} =~ /^old/ && $w0{ $_->{worker} // 0 } } @log), 3,
   'old requests were forwarded by old workers');
is(scalar(grep { $_->{seq} =~ /^new/ && $wn{ $_->{worker} // 0 } } @log), 3,
   'new requests were forwarded by new workers');

ok(wait_for(sub { !grep { kill 0, $_ } @w0 }, 10), 'old workers exit after resume');
is(total_held(), 0, 'held=0 after resume');

$_->close for @old, @new;
finish();
