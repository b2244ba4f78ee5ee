#!/usr/bin/perl
# log_level.t: with the error log at Debian's default level (`error`), every change of a
# scope's state reaches it: pause, resume, auto-resume, a start that restores a pause from
# the state file, and a pause or resume written to it by another nginx generation is
# covered by the same level (timers.rs). Routine lines (no state file yet) stay below it.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use Intermission::Test;

my $CONF = <<'CONF';
http {
    intermission_state_file %%PREFIX%%/intermission.state;
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

start_nginx($CONF, log_level => 'error');

sub lines_like { my ($re) = @_; scalar grep { /\[error\].*$re/ } error_log_lines() }

is(scalar(grep { /no state file/ } error_log_lines()), 0, 'the first start says nothing at level error');

ctl('POST', 'enable');
ok(wait_for(sub { lines_like(qr/intermission: scope "default" paused by 127\.0\.0\.1/) }),
   'pause: an [error] line naming the scope and the client');
ctl('POST', 'disable');
ok(wait_for(sub { lines_like(qr/intermission: scope "default" resumed by 127\.0\.0\.1/) }),
   'resume: an [error] line');

ctl('POST', 'enable', { auto_resume => '500ms' });
ok(wait_for(sub { lines_like(qr/intermission: scope "default" auto-resumed/) }),
   'auto-resume: an [error] line');

ctl('POST', 'enable');
stop_nginx();
start_nginx($CONF, log_level => 'error');
ok(wait_for(sub { lines_like(qr/intermission: scope "default" starts paused, as the state file/) }),
   'a start that restores a pause: an [error] line');
ctl('POST', 'disable');

finish();
