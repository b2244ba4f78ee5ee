#!/usr/bin/perl
# failure_hold_directives.t: `intermission_on_failure off | hold [idempotent] [http_503]
# [interval=TIME] [check=URI];` (context: location). `nginx -t` fails with a message that
# names the directive (and not as an unknown directive) for: an unknown value (bogus, on),
# no argument, interval=0, interval=0s, interval=-1s, interval=abc, an empty interval=, an
# unknown parameter (hold bogus=1s, hold idempotant), a repeated option (interval,
# idempotent), off with an option, check= with no URI, a URI not starting with /, a full
# URL, a space in it, the directive twice in one location, and the directive at server,
# http and main level. It passes for off, hold, hold with interval=500ms, 2s and 1m, with
# idempotent, http_503 and check=/healthz in any order, and in a nested location; hold
# where intermission is off fails.
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
            intermission on;
            $loc
            proxy_pass http://127.0.0.1:%%T_PORT%%;
        }
        location /ctl/ {
            intermission_control;
        }
        $extra
    }
}
CONF
}

my $D = 'intermission_on_failure';

my @bad = (
    ["$D bogus",                    $D, location => "$D bogus;"],
    ["$D on",                       $D, location => "$D on;"],
    ["$D (no argument)",            $D, location => "$D;"],
    ["$D hold interval=0",          $D, location => "$D hold interval=0;"],
    ["$D hold interval=0s",         $D, location => "$D hold interval=0s;"],
    ["$D hold interval=-1s",        $D, location => "$D hold interval=-1s;"],
    ["$D hold interval=abc",        $D, location => "$D hold interval=abc;"],
    ["$D hold interval=",           $D, location => "$D hold interval=;"],
    ["$D hold bogus=1s",            $D, location => "$D hold bogus=1s;"],
    ["$D hold interval twice",      $D, location => "$D hold interval=1s interval=2s;"],
    ["$D hold idempotant",          $D, location => "$D hold idempotant;"],
    ["$D hold idempotent twice",    $D, location => "$D hold idempotent idempotent;"],
    ["$D off idempotent",           $D, location => "$D off idempotent;"],
    ["$D off interval=1s",          $D, location => "$D off interval=1s;"],
    ["$D hold check=",              $D, location => "$D hold check=;"],
    ["$D hold check=healthz",       $D, location => "$D hold check=healthz;"],
    ["$D hold check=http://x/h",    $D, location => "$D hold check=http://x/h;"],
    ["$D hold check with a space",  $D, location => "$D hold \"check=/a b\";"],
    ["$D hold check twice",         $D, location => "$D hold check=/a check=/b;"],
    ["$D twice in a location",      $D, location => "$D hold; $D hold;"],
    ["$D at server level",          $D, server => "$D hold;"],
    ["$D at http level",            $D, http => "$D hold;"],
    ["$D at main level",            $D, main => "$D hold;"],
    ["$D hold where intermission is off", $D,
     extra => "location /off/ { intermission off; $D hold; proxy_pass http://127.0.0.1:%%T_PORT%%; }"],
);

my @good = (
    ["$D off",                      location => "$D off;"],
    ["$D hold",                     location => "$D hold;"],
    ["$D hold interval=500ms",      location => "$D hold interval=500ms;"],
    ["$D hold interval=2s",         location => "$D hold interval=2s;"],
    ["$D hold interval=1m",         location => "$D hold interval=1m;"],
    ["$D hold idempotent",          location => "$D hold idempotent;"],
    ["$D hold http_503",            location => "$D hold http_503;"],
    ["$D hold check=/healthz",      location => "$D hold check=/healthz;"],
    ["$D hold, all options",        location => "$D hold check=/h?x=1 http_503 interval=2s idempotent;"],
    ["$D in a nested location",     extra => "location /n/ { intermission on; location /n/m/ { $D hold; "
                                           . "proxy_pass http://127.0.0.1:%%T_PORT%%; } }"],
);

check_directives(\&conf, bad => \@bad, good => \@good);

finish();
