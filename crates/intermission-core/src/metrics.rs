//! `GET metrics`: every figure of status in Prometheus's text exposition format (0.0.4).

use core::fmt::Write;

use crate::shared::{ScopeStatus, HOLD_BUCKETS_MS};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Renders the scopes; `now_ms` is unix ms.
pub fn render(scopes: &[ScopeStatus], now_ms: u64) -> String {
    let mut out = String::new();
    let secs = |ms: u64| ms as f64 / 1000.0;
    let gauge = |out: &mut String, name: &str, help: &str, v: &dyn Fn(&ScopeStatus) -> f64| {
        family(out, name, "gauge", help, scopes, v)
    };
    gauge(&mut out, "intermission_paused", "1 while the scope is paused.", &|s| {
        f64::from(u8::from(s.paused))
    });
    gauge(&mut out, "intermission_paused_seconds", "How long the scope has been paused.", &|s| {
        if s.paused {
            secs(now_ms.saturating_sub(s.paused_since_ms))
        } else {
            0.0
        }
    });
    gauge(&mut out, "intermission_held", "Requests held now, over all workers.", &|s| {
        s.held as f64
    });
    gauge(&mut out, "intermission_oldest_held_seconds", "Age of the oldest held request.", &|s| {
        s.oldest_held_ms.map_or(0.0, |t| secs(now_ms.saturating_sub(t)))
    });
    gauge(&mut out, "intermission_inflight", "Requests passed on and not finished.", &|s| {
        s.inflight as f64
    });
    gauge(
        &mut out,
        "intermission_upgraded",
        "Connections that switched protocols (WebSocket): a drain does not wait for them.",
        &|s| s.upgraded as f64,
    );
    gauge(
        &mut out,
        "intermission_streams",
        "Requests in flight in intermission_drain off locations: a drain does not wait.",
        &|s| s.streams as f64,
    );
    gauge(
        &mut out,
        "intermission_down",
        "1 while the scope is down: a readiness check failed (intermission_on_failure).",
        &|s| f64::from(u8::from(s.down)),
    );
    gauge(
        &mut out,
        "intermission_auto_resume_timestamp_seconds",
        "When the scope resumes by itself (Unix time), 0 if not set.",
        &|s| s.auto_resume_at_ms.map_or(0.0, secs),
    );
    let counter = |out: &mut String, name: &str, help: &str, v: &dyn Fn(&ScopeStatus) -> u64| {
        family(out, name, "counter", help, scopes, &|s| v(s) as f64)
    };
    counter(&mut out, "intermission_held_total", "Requests ever held.", &|s| s.held_total);
    counter(&mut out, "intermission_released_total", "Held requests released.", &|s| {
        s.released_total
    });
    counter(&mut out, "intermission_aborted_total", "Held requests whose client left.", &|s| {
        s.aborted_total
    });
    counter(&mut out, "intermission_timed_out_total", "Requests held until max_time.", &|s| {
        s.timed_out_total
    });
    counter(
        &mut out,
        "intermission_rejected_total",
        "Requests answered 503 by the module.",
        &|s| s.rejected_total,
    );
    counter(&mut out, "intermission_failed_total", "Requests held after a failure.", &|s| {
        s.failed_total
    });
    counter(&mut out, "intermission_retried_total", "Requests sent again after a failure.", &|s| {
        s.retried_total
    });
    counter(
        &mut out,
        "intermission_gave_up_total",
        "Requests held after a failure and answered its error.",
        &|s| s.gave_up_total,
    );
    counter(&mut out, "intermission_went_down_total", "Times the scope went down.", &|s| {
        s.went_down_total
    });
    counter(&mut out, "intermission_checks_total", "Readiness checks sent.", &|s| s.checks_total);
    histogram(&mut out, scopes);
    out
}

fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    scopes: &[ScopeStatus],
    value: &dyn Fn(&ScopeStatus) -> f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for s in scopes {
        let _ = writeln!(out, "{name}{{scope=\"{}\"}} {}", label(&s.name), value(s));
    }
}

fn histogram(out: &mut String, scopes: &[ScopeStatus]) {
    let name = "intermission_hold_seconds";
    let _ =
        writeln!(out, "# HELP {name} How long held requests were held.\n# TYPE {name} histogram");
    for s in scopes {
        let scope = label(&s.name);
        let mut cumulative = 0u64;
        for (i, n) in s.hold_buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(*n);
            let le = HOLD_BUCKETS_MS
                .get(i)
                .map_or("+Inf".into(), |ms| format!("{}", *ms as f64 / 1000.0));
            let _ = writeln!(out, "{name}_bucket{{scope=\"{scope}\",le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{scope=\"{scope}\"}} {}", s.hold_sum_ms as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count{{scope=\"{scope}\"}} {cumulative}");
    }
}

/// Escapes a label value. Scope names are plain, but the format's rules are cheap to keep;
/// it has escapes only for `\\`, `"` and newline, so other control characters become `?`.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::scope;

    #[test]
    fn renders_every_family_with_a_scope_label() {
        let mut a = scope("a", 1_000, Some(2_000));
        a.hold_buckets[0] = 2;
        a.hold_buckets[HOLD_BUCKETS_MS.len()] = 1;
        a.hold_sum_ms = 400_020;
        let text = render(&[a, scope("b", 0, None)], 3_000);
        for line in [
            "# TYPE intermission_paused gauge",
            "intermission_paused{scope=\"a\"} 1",
            "intermission_paused{scope=\"b\"} 0",
            "intermission_paused_seconds{scope=\"a\"} 2",
            "intermission_oldest_held_seconds{scope=\"a\"} 1",
            "intermission_inflight{scope=\"b\"} 5",
            "intermission_auto_resume_timestamp_seconds{scope=\"a\"} 0",
            "# TYPE intermission_rejected_total counter",
            "intermission_timed_out_total{scope=\"a\"} 3",
            "# TYPE intermission_hold_seconds histogram",
            "intermission_hold_seconds_bucket{scope=\"a\",le=\"0.01\"} 2",
            "intermission_hold_seconds_bucket{scope=\"a\",le=\"300\"} 2",
            "intermission_hold_seconds_bucket{scope=\"a\",le=\"+Inf\"} 3",
            "intermission_hold_seconds_sum{scope=\"a\"} 400.02",
            "intermission_hold_seconds_count{scope=\"a\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
