#!/usr/bin/perl
# state_file.t: intermission_state_file keeps a pause across a full restart of nginx (stop,
# start), so that a crash or a `systemctl restart` in the middle of a maintenance does not
# open the gates onto a backend that is down. A resume clears it. A state file that is
# missing, unreadable, corrupt, or whose auto-resume time passed while nginx was stopped is
# reported in the error log and nginx starts unpaused. Bad directive values fail nginx -t.
use strict;
use warnings;
use Test::More;
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

my $state = prefix() . '/intermission.state';
my $port = port('PORT');
sub slurp { open(my $fh, '<', $_[0]) or return undef; local $/; my $t = <$fh>; close $fh; $t }
sub spit { open(my $fh, '>', $_[0]) or die "$_[0]: $!"; print $fh $_[1]; close $fh }
sub log_has { my ($re) = @_; scalar grep { /$re/ } error_log_lines(qr/intermission/) }

start_nginx($CONF);
ok(log_has(qr/no state file .* starting unpaused/), 'a missing state file is reported');
ok(!scope_status('default')->{paused}, 'starts unpaused without a state file');

my ($st, undef, $j) = ctl('POST', 'pause', 'auto_resume=1h');
is($st, 200, 'paused with auto_resume=1h');
like(slurp($state) // '',
     qr/^ngx_http_intermission_module state 1\nwriter [0-9a-f]+\npaused default \d+ \d+\n\z/,
     'the state file records the pause and its deadline');

# A second pause without auto_resume (another operator's pause of every scope) keeps the
# deadline, in the zone and in the file.
my $file_before = slurp($state) // '';
($st, undef, $j) = ctl('POST', 'pause');
is($st, 200, 'paused again, without auto_resume');
ok(defined scope_status('default')->{auto_resume_at}, '... the deadline is kept');
my ($dl) = $file_before =~ /^paused default \d+ (\d+)$/m;
like(slurp($state) // '', qr/^paused default \d+ \Q${\($dl \/\/ 'none')}\E\n\z/m,
     '... and the state file still records it');

# A full restart while paused: nginx comes back paused, with the same deadline.
my $before = scope_status('default');
stop_nginx();
start_nginx($CONF);
my $after = scope_status('default');
ok($after->{paused}, 'paused again after a full restart');
is($after->{paused_since}, $before->{paused_since}, 'paused_since survives the restart');
is($after->{auto_resume_at}, $before->{auto_resume_at}, 'the auto-resume deadline survives too');
ok(log_has(qr/scope "default" starts paused, as the state file/), 'the restore is logged');

my $c = http_connect($port);
$c->send_request(path => '/after-restart', keepalive => 0);
ok(wait_held('default', 1), 'a request after the restart is held');
is(scalar ctl('POST', 'resume'), 200, 'resumed');
my ($r) = read_responses(5, $c);
is($r && $r->[0], 200, 'the held request is answered after the resume');
like(slurp($state) // '', qr/^ngx_http_intermission_module state 1\nwriter [0-9a-f]+\n\z/,
     'a resume clears the state file');

stop_nginx();
start_nginx($CONF);
ok(!scope_status('default')->{paused}, 'a restart after the resume starts unpaused');

# Corrupt, unreadable, expired: reported, and nginx starts unpaused.
my @cases = (
    [ corrupt => sub { spit($state, "garbage\n") }, qr/state file .* is corrupt/ ],
    [ unreadable => sub { unlink $state; mkdir $state or die $! }, qr/cannot read the state file/ ],
    [ expired => sub {
          rmdir $state;
          my $now = int(Time::HiRes::time() * 1000);
          spit($state, "ngx_http_intermission_module state 1\npaused default "
                       . ($now - 60_000) . " " . ($now - 1000) . "\n");
      }, qr/auto-resume time passed while nginx was stopped/ ],
    [ 'unknown scope' => sub {
          spit($state, "ngx_http_intermission_module state 1\npaused gone 1000 -\n");
      }, qr/pauses scope "gone", which the configuration no longer has/ ],
);
for my $case (@cases) {
    my ($name, $prepare, $logged) = @$case;
    stop_nginx();
    $prepare->();
    start_nginx($CONF);
    ok(log_has($logged), "$name state file: reported in the error log");
    ok(!scope_status('default')->{paused}, "$name state file: nginx starts unpaused");
    my ($code) = http_get($port, "/" . ($name =~ s/\W/_/gr));
    is($code, 200, "$name state file: requests pass");
}

# Bad values fail nginx -t, naming the directive.
for my $bad ('intermission_state_file "";', 'intermission_state_file a b;',
             'intermission_state_file /tmp/a; intermission_state_file /tmp/b;') {
    my ($rc, $out) = nginx_t("http {\n    $bad\n}\n");
    isnt($rc, 0, "nginx -t fails: $bad");
    like($out, qr/"intermission_state_file"/, "... naming the directive: $bad");
}
my ($rc, $out) = nginx_t("http {\n server {\n  intermission_state_file /tmp/x;\n }\n}\n");
like($out, qr/"intermission_state_file" directive is not allowed here/, 'http level only');

finish();
