#!/usr/bin/perl
# scope_slots.t: the 64-scope limit counts the scopes in use (configured, paused or
# holding), not every name an nginx instance has ever seen; and `nginx -t` sees the limit.
# - Reload 3 times, each with 40 distinct scope names (s1..s40, then t1..t40, then
#   u1..u40, one location each): every reload works (new workers start, GET /u40/ answers
#   200, status lists u40), and nothing is logged at emerg/alert level.
# - Status after the third reload lists only the scopes configured or in use: u1..u40,
#   not s1 or t1.
# - `nginx -t` with 65 distinct scopes in one configuration fails, naming "intermission".
use strict;
use warnings;
use Test::More;
use Intermission::Test;

sub conf {
    my ($letter, $n) = @_;
    my $locs = join '', map {
        "        location /$letter$_/ {\n            intermission $letter$_;\n            return 200 \"$letter$_\";\n        }\n"
    } 1 .. $n;
    return <<"CONF";
http {
    server {
        listen 127.0.0.1:%%PORT%%;
$locs    }
    %%CONTROL_SERVER%%
}
CONF
}

sub names { my $j = ctl_status(); return { map { $_->{name} => 1 } @{ ($j && $j->{scopes}) || [] } } }

start_nginx(conf('base', 1));
my $port = port('PORT');

for my $letter (qw(s t u)) {
    my ($old, $new) = eval { reload_nginx(conf($letter, 40), timeout => 5) };
    ok($new && @$new, "reload with $letter" . "1..${letter}40: new workers start")
        or diag("reload failed: $@\n" . join("\n", error_log_lines(qr/\[emerg\]/)));
    next unless $new && @$new;
    my %n = map { $_ => 1 } @$new;
    wait_for(sub { !grep { !$n{$_} } worker_pids() });    # old workers no longer accept
    my ($st, undef, $body) = http_get($port, "/${letter}40/");
    is("$st:" . ($body // ''), "200:${letter}40", "... GET /${letter}40/ answers 200 from the new configuration");
    ok(names()->{"${letter}40"}, "... status lists ${letter}40");
}

my $names = names();
is(scalar(grep { /^u\d+$/ } keys %$names), 40, 'status after the third reload lists u1..u40');
ok(!$names->{s1}, 'status does not list s1 (neither configured nor in use)');
ok(!$names->{t1}, 'status does not list t1 (neither configured nor in use)');
ok(!$names->{base1}, 'status does not list base1');
my @emerg = error_log_lines(qr/\[emerg\]/);
is(scalar @emerg, 0, 'no emerg line in the error log (no reload failed)') or diag(join "\n", @emerg);

{
    my ($rc, $out) = nginx_t(conf('v', 65));
    isnt($rc, 0, 'nginx -t with 65 distinct scopes fails');
    like($out, qr/"intermission"/, '... naming "intermission"') or diag($out);
    ($rc, $out) = nginx_t(conf('w', 64));
    is($rc, 0, 'nginx -t with 64 distinct scopes passes') or diag($out);
}

finish();
