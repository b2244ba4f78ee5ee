#!/usr/bin/perl
# manpages.t: the manual pages in man/ say what the code has. ngx_http_intermission_module(5)
# has a section for every directive of src/directives.rs and an entry for every control
# command; intermissionctl(1) names every command and option that `intermissionctl
# <command> --help` lists; both render with man(1) without a warning (when man is installed).
use strict;
use warnings;
use Test::More;
use Intermission::Test;

my $ROOT = repo_root();
my $m5 = read_file_text("$ROOT/man/ngx_http_intermission_module.5");
my $m1 = read_file_text("$ROOT/man/intermissionctl.1");
ok(defined $m5 && defined $m1, 'both manual pages exist');

my @directives = read_file_text("$ROOT/src/directives.rs") =~ /ngx_string!\("(intermission\w*)"\)/g;
ok(@directives >= 12, scalar(@directives) . ' directives in src/directives.rs');
for my $d (@directives) {
    ok($m5 =~ /^\.SS \Q$d\E$/m, "ngx_http_intermission_module.5: a section for $d");
}
my @commands = read_file_text("$ROOT/crates/intermission-core/src/control.rs")
    =~ /b"(\w+)"(?: \| b"\w+")? => Some\(Command::/g;
my @aliases = read_file_text("$ROOT/crates/intermission-core/src/control.rs")
    =~ /b"\w+" \| b"(\w+)" => Some\(Command::/g;
ok(@commands >= 5, "control commands: @commands (aliases @aliases)");
for my $c (@commands) {
    ok($m5 =~ /^\.BR \Q$c\E\b/m, "ngx_http_intermission_module.5: the command $c");
}
for my $c (@aliases) {
    ok($m5 =~ /^\.BR \w+ .*alias "? ?\Q$c\E\b/m, "ngx_http_intermission_module.5: the alias $c");
}

# roff writes each - of an option as \-
sub roff { my ($s) = @_; $s =~ s/-/\\-/g; $s }
my %seen;
for my $cmd ('', qw(status pause resume drain run)) {
    my ($rc, $out) = run_cmd('python3', "$ROOT/scripts/intermissionctl", ($cmd ? $cmd : ()), '--help');
    is($rc, 0, "intermissionctl $cmd --help");
    $seen{$_}++ for $out =~ /(?<![\w-])(--[a-z][a-z-]+|-[a-z])\b/g;
    ok($m1 =~ /^\.B \Q$cmd\E$/m, "intermissionctl.1: the command $cmd") if $cmd;
}
for my $opt (sort keys %seen) {
    my $r = roff($opt);
    ok($m1 =~ /\Q$r\E(?![\w\\])/, "intermissionctl.1: $opt");
}

SKIP: {
    skip 'man(1) is not installed', 4 unless -x '/usr/bin/man';
    for my $f ("$ROOT/man/intermissionctl.1", "$ROOT/man/ngx_http_intermission_module.5") {
        my ($rc, $out, $err) = run_cmd({ env => { LC_ALL => 'C.UTF-8', MANROFFSEQ => '', MANWIDTH => 80 } },
                                       'man', '--warnings', '-E', 'UTF-8', '-l', $f);
        is($rc, 0, "$f renders");
        is($err, '', "$f: no warning") or diag($err);
    }
}

done_testing();
