#!/usr/bin/perl
# metrics.t: `GET metrics` on the control endpoint, Prometheus text format 0.0.4.
# - 200 with Content-Type "text/plain; version=0.0.4"; parsed by Python's
#   prometheus_client; each family declared once with its TYPE: gauges intermission_paused,
#   _paused_seconds, _held, _oldest_held_seconds, _inflight,
#   _auto_resume_timestamp_seconds; counters intermission_held_total, _released_total,
#   _aborted_total, _timed_out_total, _rejected_total; histogram intermission_hold_seconds
#   (_bucket{le}, _sum, _count); every sample has a scope label naming a configured scope.
# - At start: paused 0, held 0, counters 0 for both scopes.
# - After activity (default: 2 held ~0.3 s and released, 1 aborted, then paused again with
#   1 held and 1 slow request in flight; beta: paused with auto_resume=1h, 1 request
#   rejected by max_time 300ms + reject), the values agree with status: paused, held,
#   inflight, paused_seconds ~ paused_ms, oldest_held_seconds ~ oldest_held_ms,
#   auto_resume_timestamp_seconds ~ auto_resume_at (~ now + 3600), every counter; the
#   histogram is cumulative, +Inf bucket = _count, _count covers the released requests.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Intermission::Test;

start_nginx(<<'CONF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            intermission on;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
        location /rej/ {
            intermission beta;
            intermission_max_time 300ms;
            intermission_on_timeout reject;
            proxy_pass http://127.0.0.1:%%BACKEND_PORT%%;
        }
    }
    %%CONTROL_SERVER%%
}
CONF

my $port = port('PORT');
my @SCOPES = qw(beta default);

my %TYPE = (
    intermission_paused                        => 'gauge',
    intermission_paused_seconds                => 'gauge',
    intermission_held                          => 'gauge',
    intermission_oldest_held_seconds           => 'gauge',
    intermission_inflight                      => 'gauge',
    intermission_upgraded                      => 'gauge',
    intermission_streams                       => 'gauge',
    intermission_down                          => 'gauge',
    intermission_failed_total                  => 'counter',
    intermission_retried_total                 => 'counter',
    intermission_gave_up_total                 => 'counter',
    intermission_went_down_total               => 'counter',
    intermission_checks_total                  => 'counter',
    intermission_auto_resume_timestamp_seconds => 'gauge',
    intermission_held_total                    => 'counter',
    intermission_released_total                => 'counter',
    intermission_aborted_total                 => 'counter',
    intermission_timed_out_total               => 'counter',
    intermission_rejected_total                => 'counter',
    intermission_hold_seconds                  => 'histogram',
);
my %COUNTER = (held => 'intermission_held_total', released => 'intermission_released_total',
               aborted => 'intermission_aborted_total', timed_out => 'intermission_timed_out_total',
               rejected => 'intermission_rejected_total');

# scrape($tag) -> { raw, families, samples => { name => { scope => [ {labels, value} ] } } }
sub scrape {
    my ($tag) = @_;
    my ($st, $h, $raw) = http_get(port('CTL_PORT'), '/ctl/metrics');
    is($st, 200, "$tag: GET metrics 200");
    like($h && $h->{'content-type'} // '', qr{^text/plain;\s*version=0\.0\.4\b}, "$tag: Content-Type text/plain; version=0.0.4");
    $raw //= '';
    my $fam = eval { parse_prometheus($raw) };
    ok($fam, "$tag: prometheus_client parses it") or diag("$@\n$raw");
    $fam ||= [];

    # TYPE declarations, from the text itself (the parser strips "_total" off counter names)
    my %decl;
    $decl{$1}{$2}++ while $raw =~ /^# TYPE (\S+) (\S+)\s*$/mg;
    for my $n (sort keys %TYPE) {
        is_deeply($decl{$n}, { $TYPE{$n} => 1 }, "$tag: $n declared once as $TYPE{$n}")
            or diag(explain($decl{$n}));
    }
    my %ptype = map { $_->{name} => $_->{type} } grep { $_->{type} ne 'counter' } @$fam;
    my %pctr = map { $_->{name} . '_total' => 1 } grep { $_->{type} eq 'counter' } @$fam;
    is(scalar(grep { $TYPE{$_} eq 'counter' ? !$pctr{$_} : ($ptype{$_} // '') ne $TYPE{$_} } keys %TYPE), 0,
       "$tag: the parser sees every family with its type");

    my (%s, @nolabel, @badscope);
    my %known = map { $_ => 1 } @SCOPES;
    for my $f (@$fam) {
        for my $smp (@{ $f->{samples} }) {
            my $sc = $smp->{labels}{scope};
            if (!defined $sc) { push @nolabel, $smp->{name}; next }
            push @badscope, "$smp->{name}\{scope=$sc}" unless $known{$sc};
            push @{ $s{ $smp->{name} }{$sc} }, { labels => $smp->{labels}, value => $smp->{value} };
        }
    }
    is(scalar @nolabel, 0, "$tag: every sample has a scope label") or diag("@nolabel");
    is(scalar @badscope, 0, "$tag: scope labels name configured scopes") or diag("@badscope");
    return { raw => $raw, families => $fam, samples => \%s };
}

# value($m, $name, $scope) -> the single sample's value (undef if none)
sub value {
    my ($m, $name, $scope) = @_;
    my $l = $m->{samples}{$name}{$scope} or return undef;
    return $l->[0]{value};
}

sub check_histogram {
    my ($m, $tag, $scope) = @_;
    my @b = @{ $m->{samples}{intermission_hold_seconds_bucket}{$scope} || [] };
    ok(@b >= 2, "$tag: $scope has hold_seconds buckets");
    my %by = map { $_->{labels}{le} => $_->{value} } @b;
    ok(exists $by{'+Inf'}, "$tag: $scope has the +Inf bucket");
    my @le = sort { ($a eq '+Inf' ? 9e99 : $a) <=> ($b eq '+Inf' ? 9e99 : $b) } keys %by;
    my $mono = 1;
    for my $i (1 .. $#le) { $mono = 0 if $by{ $le[$i] } < $by{ $le[$i - 1] } }
    ok($mono, "$tag: $scope buckets are cumulative") or diag(explain(\%by));
    my $count = value($m, 'intermission_hold_seconds_count', $scope);
    my $sum = value($m, 'intermission_hold_seconds_sum', $scope);
    ok(defined $count && defined $sum, "$tag: $scope has _count and _sum");
    is($by{'+Inf'}, $count, "$tag: $scope +Inf bucket = _count");
    ok(defined $sum && $sum >= 0, "$tag: $scope _sum >= 0");
    return ($count, $sum);
}

# ---- at start
{
    my $m = scrape('start');
    for my $sc (@SCOPES) {
        is(value($m, 'intermission_paused', $sc), 0, "start: $sc paused 0");
        is(value($m, 'intermission_held', $sc), 0, "start: $sc held 0");
        is(value($m, 'intermission_inflight', $sc), 0, "start: $sc inflight 0");
        for my $k (sort keys %COUNTER) {
            is(value($m, $COUNTER{$k}, $sc), 0, "start: $sc $COUNTER{$k} 0");
        }
        my ($count) = check_histogram($m, 'start', $sc);
        is($count, 0, "start: $sc hold_seconds_count 0");
    }
}

# ---- activity
is(scalar ctl('POST', 'enable', 'scope=default'), 200, 'default paused');
my @c = map { http_connect($port) } 1 .. 3;
$c[$_]->send_request(path => "/act/$_", keepalive => 0) for 0 .. 2;
ok(wait_held('default', 3), 'three held');
sleep 0.3;
$c[2]->close;
ok(wait_held('default', 2), 'one client left');
is(scalar ctl('POST', 'disable', 'scope=default'), 200, 'default resumed');
my @r = read_responses(5, @c[0, 1]);
is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'two released and answered');
$_->close for @c;

my $slow = http_connect($port);
$slow->send_request(path => '/act/slow?sleep=4000', keepalive => 0);
ok(wait_for(sub { grep { $_->{uri} eq '/act/slow?sleep=4000' } backend_log() }), 'slow request in flight');
is(scalar ctl('POST', 'enable', 'scope=default'), 200, 'default paused again');
my $held = http_connect($port);
$held->send_request(path => '/act/held', keepalive => 0);
ok(wait_held('default', 1), 'one held');

is(scalar ctl('POST', 'enable', 'scope=beta&auto_resume=1h'), 200, 'beta paused with auto_resume=1h');
{
    my ($st) = http_get($port, '/rej/1');
    is($st, 503, 'beta: request rejected after max_time');
}
sleep 0.1;

my $status = ctl_status();
my $now = time;
my $m = scrape('after activity');
my %st = map { $_->{name} => $_ } @{ ($status && $status->{scopes}) || [] };

for my $sc (@SCOPES) {
    my $s = $st{$sc} || {};
    is(value($m, 'intermission_paused', $sc), $s->{paused} ? 1 : 0, "$sc: paused matches status");
    is(value($m, 'intermission_upgraded', $sc), $s->{upgraded}, "$sc: upgraded matches status");
    is(value($m, 'intermission_streams', $sc), $s->{streams}, "$sc: streams matches status");
    is(value($m, 'intermission_held', $sc), $s->{held}, "$sc: held matches status ($s->{held})");
    is(value($m, 'intermission_inflight', $sc), $s->{inflight}, "$sc: inflight matches status");
    for my $k (sort keys %COUNTER) {
        is(value($m, $COUNTER{$k}, $sc), $s->{counters}{$k}, "$sc: $COUNTER{$k} matches counters.$k");
    }
    my $ps = value($m, 'intermission_paused_seconds', $sc);
    ok(defined $ps && defined $s->{paused_ms} && abs($ps - $s->{paused_ms} / 1000) < 2,
       "$sc: paused_seconds ~ paused_ms") or diag("paused_seconds " . ($ps // 'undef'));
}

# the expected values themselves
is($st{default}{counters}{held}, 4, 'default: held counter 4');
is(value($m, 'intermission_held_total', 'default'), 4, 'default: intermission_held_total 4');
is(value($m, 'intermission_released_total', 'default'), 2, 'default: intermission_released_total 2');
is(value($m, 'intermission_aborted_total', 'default'), 1, 'default: intermission_aborted_total 1');
is(value($m, 'intermission_held', 'default'), 1, 'default: intermission_held 1');
is(value($m, 'intermission_inflight', 'default'), 1, 'default: intermission_inflight 1');
is(value($m, 'intermission_paused', 'default'), 1, 'default: intermission_paused 1');
is(value($m, 'intermission_timed_out_total', 'beta'), 1, 'beta: intermission_timed_out_total 1');
is(value($m, 'intermission_rejected_total', 'beta'), 1, 'beta: intermission_rejected_total 1');
is(value($m, 'intermission_paused', 'beta'), 1, 'beta: intermission_paused 1');

{
    my $o = value($m, 'intermission_oldest_held_seconds', 'default');
    ok(defined $o && defined $st{default}{oldest_held_ms} && abs($o - $st{default}{oldest_held_ms} / 1000) < 2,
       'default: oldest_held_seconds ~ oldest_held_ms') or diag("oldest_held_seconds " . ($o // 'undef'));
    my $ar = value($m, 'intermission_auto_resume_timestamp_seconds', 'beta');
    my $at = rfc3339_epoch($st{beta}{auto_resume_at});
    ok(defined $ar && defined $at && abs($ar - $at) < 1.5, 'beta: auto_resume_timestamp_seconds ~ auto_resume_at')
        or diag("metric " . ($ar // 'undef') . " status " . ($st{beta}{auto_resume_at} // 'undef'));
    ok(defined $ar && abs($ar - ($now + 3600)) < 60, 'beta: auto_resume_timestamp_seconds ~ now + 3600');
    my $ard = value($m, 'intermission_auto_resume_timestamp_seconds', 'default');
    ok(!$ard, 'default: no auto_resume timestamp (absent or 0)') or diag("value $ard");
}

{
    my ($count, $sum) = check_histogram($m, 'after activity', 'default');
    cmp_ok($count // -1, '>=', 2, 'default: hold_seconds_count covers the 2 released');
    cmp_ok($count // 1e9, '<=', 4, 'default: hold_seconds_count not more than ever held');
    cmp_ok($sum // -1, '>=', 0.5, 'default: hold_seconds_sum covers 2 holds of ~0.3 s');
    check_histogram($m, 'after activity', 'beta');
}

# cleanup
is(scalar ctl('POST', 'disable'), 200, 'all resumed');
@r = read_responses(6, $held, $slow);
is(scalar(grep { $_ && $_->[0] == 200 } @r), 2, 'held and slow requests answered');
$_->close for $held, $slow;

finish();
