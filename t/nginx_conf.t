#!/usr/bin/perl
# nginx_conf.t: every example configuration in nginx-conf/ passes `nginx -t` with the
# module built here (its load_module line points at the built module instead).
use strict;
use warnings;
use Test::More;
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use Intermission::Test;

my $dir = abs_path(dirname(__FILE__) . '/../nginx-conf');
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

# The Debian layout the Dockerfile installs: the module enabled by its own file, the example
# server included inside http {} (as Debian's stock nginx.conf includes conf.d/*.conf).
my $deb = "$dir/debian";
open(my $mfh, '<', "$deb/mod-http-intermission.conf") or die "$deb: $!";
like(do { local $/; <$mfh> }, qr/^load_module\s+modules\/ngx_http_intermission_module\.so;/m,
     'debian/mod-http-intermission.conf loads the module from modules/');
close $mfh;
my ($rc, $out) = nginx_t("http {\n    include $deb/intermission.conf;\n}\n");
is($rc, 0, 'nginx -t accepts debian/intermission.conf inside http {}') or diag($out);

# The Dockerfile copies only files that exist and runs only scripts that CI runs too.
my $df = "$dir/../Dockerfile";
open(my $dfh, '<', $df) or die "$df: $!";
my @lines = <$dfh>;
close $dfh;
for (grep { /^COPY\s+(?!--from)/ } @lines) {
    my ($src) = /^COPY\s+(\S+)/;
    next if $src eq '.';
    ok(-e "$dir/../$src", "Dockerfile: COPY source $src exists");
}
for my $script (map { /\b(scripts\/[\w-]+)/g } grep { /^RUN/ } @lines) {
    ok(-x "$dir/../$script", "Dockerfile: $script exists and is executable");
}

finish();
