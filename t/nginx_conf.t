#!/usr/bin/perl
# nginx_conf.t: every example configuration in nginx-conf/ passes `nginx -t` with the
# module built here (its load_module line points at the built module instead).
use strict;
use warnings;
use Test::More;
use File::Basename qw(dirname);
use Intermission::Test;

my $dir = dirname(__FILE__) . '/../nginx-conf';
my @files = sort glob("$dir/*.conf");
ok(@files > 0, 'nginx-conf/ has example configurations');

for my $f (@files) {
    open(my $fh, '<', $f) or die "$f: $!";
    my $conf = do { local $/; <$fh> };
    close $fh;
    like($conf, qr/^load_module\s+\S*ngx_http_intermission_module\.so;/m, "$f loads the module");
    # The harness adds its own load_module line (and pid, error_log) around the text.
    $conf =~ s/^load_module\s+\S*ngx_http_intermission_module\.so;\n//m;
    my ($rc, $out) = nginx_t($conf);
    is($rc, 0, "nginx -t accepts $f") or diag($out);
}

finish();
