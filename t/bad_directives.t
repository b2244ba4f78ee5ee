#!/usr/bin/perl
# bad_directives.t: invalid uses of `intermission` / `intermission_control` make
# `nginx -t` fail with a message naming the directive; valid uses pass `nginx -t`.
use strict;
use warnings;
use Test::More;
use Intermission::Test;

sub conf {
    my (%o) = @_;
    my $http = $o{http} // '';
    my $srv  = $o{server} // '';
    my $loc  = $o{location} // '';
    my $main = $o{main} // '';
    my $extra = $o{extra} // '';
    return <<"CONF";
$main
http {
    $http
    server {
        listen 127.0.0.1:%%PORT%%;
        $srv
        location / {
            $loc
            return 200 "x";
        }
        location /ctl/ {
            intermission_control;
        }
        $extra
    }
}
CONF
}

my $n64 = 'a' x 64;
my $n65 = 'b' x 65;

my @bad = (
    ['intermission bad/name',          'intermission', location => 'intermission bad/name;'],
    ['intermission ""',                'intermission', location => 'intermission "";'],
    ['intermission <65 chars>',        'intermission', location => "intermission $n65;"],
    ['intermission a b',               'intermission', location => 'intermission a b;'],
    ['intermission (no argument)',     'intermission', location => 'intermission;'],
    ['intermission "a b"',             'intermission', location => 'intermission "a b";'],
    ['intermission sc.ope',            'intermission', location => 'intermission sc.ope;'],
    ['intermission bad name at http',  'intermission', http => 'intermission "bad!";'],
    ['intermission bad name at server','intermission', server => 'intermission bad/name;'],
    ['intermission_control on',        'intermission_control',
        extra => 'location /c2/ { intermission_control on; }'],
    ['intermission_control in server', 'intermission_control', server => 'intermission_control;'],
    ['intermission_control in http',   'intermission_control', http => 'intermission_control;'],
    ['intermission at main level',     'intermission', main => 'intermission on;'],
);


my @good = (
    ['intermission on at http',        http => 'intermission on;'],
    ['intermission on at server',      server => 'intermission on;'],
    ['intermission on at location',    location => 'intermission on;'],
    ['intermission my-scope_1',        location => 'intermission my-scope_1;'],
    ['intermission off',               location => 'intermission off;'],
    ['intermission <64 chars>',        location => "intermission $n64;"],
    ['http on, location off',           http => 'intermission on;', location => 'intermission off;'],
    ['intermission digits scope',      server => 'intermission 0123;'],
);

check_directives(\&conf, bad => \@bad, good => \@good);

finish();
