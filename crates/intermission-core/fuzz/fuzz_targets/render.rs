//! The renderers: `json::{status, change, drain, error}`, `metrics::render` and
//! `time::rfc3339_ms`, fed arbitrary strings as scope names, actions and messages (the
//! module validates names, but the renderers must hold for any string).
//!
//! Properties:
//! - never panic;
//! - every JSON document parses (serde_json), ends in exactly one newline, and gives back
//!   each string and number it was given; timestamps are RFC 3339 and denote the instant;
//! - no raw control character in a JSON document: C0 (invalid JSON) always; DEL and C1
//!   (U+007F..U+009F) too;
//! - the metrics exposition is line-by-line valid Prometheus text format 0.0.4: each sample
//!   line's scope label unescapes back to the name, the value is a number; 24 comment
//!   lines and 26 samples per scope; no raw control character in a label value.
//!
//! Counters are bounded so that sums cannot overflow u64 (the module's counts are
//! per-request increments; 2^60 is out of reach).
#![no_main]

use intermission_core::json::{self, Change, Drain, DrainScope};
use intermission_core::metrics;
use intermission_core::shared::{ScopeStatus, HOLD_BUCKETS_MS};
use intermission_core::time::rfc3339_ms;
use intermission_core_fuzz::{check_rfc3339, first_control, strict_assert};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const NB: usize = HOLD_BUCKETS_MS.len() + 1;

#[derive(Arbitrary, Debug)]
struct ScopeIn {
    name: String,
    paused: bool,
    paused_since_ms: u64,
    held: u64,
    oldest_held_ms: Option<u64>,
    inflight: u64,
    auto_resume_at_ms: Option<u64>,
    counters: [u64; 5],
    buckets: [u64; NB],
    hold_sum_ms: u64,
}

#[derive(Arbitrary, Debug)]
struct ChangeIn {
    name: String,
    paused: bool,
    changed: bool,
    held: u64,
    auto_resume_at_ms: Option<u64>,
    down: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    now_ms: u64,
    message: String,
    /// 0: "pause", 1: "resume", else `action_text`.
    action: u8,
    action_text: String,
    scopes: Vec<ScopeIn>,
    changes: Vec<ChangeIn>,
    drain: Option<(bool, u64, Vec<(String, u32)>)>,
}

fuzz_target!(|inp: Input| {
    let now = inp.now_ms;
    let scopes: Vec<ScopeStatus> = inp
        .scopes
        .iter()
        .map(|s| {
            let mut hold_buckets = [0; NB];
            for (d, b) in hold_buckets.iter_mut().zip(s.buckets) {
                *d = b >> 8; // 13 buckets of < 2^56 cannot overflow their sum
            }
            ScopeStatus {
                name: s.name.clone(),
                paused: s.paused,
                paused_since_ms: s.paused_since_ms,
                held: s.held,
                oldest_held_ms: s.oldest_held_ms,
                inflight: s.inflight,
                upgraded: s.inflight / 2,
                streams: s.held / 2,
                blockers: Vec::new(),
                auto_resume_at_ms: s.auto_resume_at_ms,
                held_total: s.counters[0],
                released_total: s.counters[1],
                aborted_total: s.counters[2],
                timed_out_total: s.counters[3],
                rejected_total: s.counters[4],
                down: s.paused && s.held % 2 == 1,
                down_since_ms: s.paused_since_ms,
                fail_status: if s.held % 3 == 0 { 504 } else { 502 },
                failed_total: s.counters[0] / 2,
                retried_total: s.counters[1] / 2,
                gave_up_total: s.counters[2] / 2,
                went_down_total: s.counters[3] / 2,
                checks_total: s.counters[4] / 2,
                hold_buckets,
                hold_sum_ms: s.hold_sum_ms,
            }
        })
        .collect();
    let changes: Vec<Change> = inp
        .changes
        .iter()
        .map(|c| Change {
            name: c.name.clone(),
            paused: c.paused,
            changed: c.changed,
            held: c.held,
            auto_resume_at_ms: c.auto_resume_at_ms,
            down: c.down,
        })
        .collect();
    let drain = inp.drain.as_ref().map(|(drained, waited, sc)| Drain {
        drained: *drained,
        waited_ms: *waited,
        scopes: sc
            .iter()
            .map(|(n, i)| DrainScope { name: n.clone(), inflight: u64::from(*i), ..Default::default() })
            .collect(),
        now_ms: now,
    });
    let action = match inp.action {
        0 => "pause",
        1 => "resume",
        _ => inp.action_text.as_str(),
    };

    // error
    let doc = parse_json("error", &json::error(&inp.message));
    assert_eq!(doc["error"].as_str(), Some(inp.message.as_str()));

    // status
    let doc = parse_json("status", &json::status(&scopes, now));
    let arr = doc["scopes"].as_array().expect("status: scopes"); // ok: a fuzz check panics on purpose
    assert_eq!(arr.len(), scopes.len());
    for (v, s) in arr.iter().zip(&scopes) {
        assert_eq!(v["name"].as_str(), Some(s.name.as_str()), "status: name");
        assert_eq!(v["paused"].as_bool(), Some(s.paused));
        if s.paused && s.paused_since_ms != 0 {
            timestamp(&v["paused_since"], s.paused_since_ms);
            assert_eq!(v["paused_ms"].as_u64(), Some(now.saturating_sub(s.paused_since_ms)));
        } else {
            assert!(v["paused_since"].is_null() && v["paused_ms"].as_u64() == Some(0));
        }
        assert_eq!(v["held"].as_u64(), Some(s.held));
        assert_eq!(v["oldest_held_ms"].as_u64(), s.oldest_held_ms.map(|t| now.saturating_sub(t)));
        assert_eq!(v["inflight"].as_u64(), Some(s.inflight));
        auto_resume(v, s.auto_resume_at_ms, now);
        let c = &v["counters"];
        for (k, n) in [
            ("held", s.held_total),
            ("released", s.released_total),
            ("aborted", s.aborted_total),
            ("timed_out", s.timed_out_total),
            ("rejected", s.rejected_total),
        ] {
            assert_eq!(c[k].as_u64(), Some(n), "status: counters.{k}");
        }
    }

    // change
    let doc = parse_json("change", &json::change(action, &changes, now, drain.as_ref(), None));
    assert_eq!(doc["action"].as_str(), Some(action));
    if let Some(d) = &drain {
        drain_fields(&doc, d);
    }
    let count = if action == "resume" { "released" } else { "held" };
    let arr = doc["scopes"].as_array().expect("change: scopes"); // ok: a fuzz check panics on purpose
    assert_eq!(arr.len(), changes.len());
    for (v, c) in arr.iter().zip(&changes) {
        assert_eq!(v["name"].as_str(), Some(c.name.as_str()), "change: name");
        assert_eq!(v["paused"].as_bool(), Some(c.paused));
        assert_eq!(v["changed"].as_bool(), Some(c.changed));
        if action == "resume" && c.down {
            assert_eq!(v["released"].as_u64(), Some(0), "change: a resume while down");
            assert_eq!(v["waiting"].as_u64(), Some(c.held));
        } else {
            assert_eq!(v[count].as_u64(), Some(c.held));
        }
        assert_eq!(v["down"].as_bool(), c.down.then_some(true));
        if c.paused {
            auto_resume(v, c.auto_resume_at_ms, now);
        }
    }

    // drain
    if let Some(d) = &drain {
        let doc = parse_json("drain", &json::drain(d));
        drain_fields(&doc, d);
        let arr = doc["scopes"].as_array().expect("drain: scopes"); // ok: a fuzz check panics on purpose
        assert_eq!(arr.len(), d.scopes.len());
        for (v, s) in arr.iter().zip(&d.scopes) {
            assert_eq!(v["name"].as_str(), Some(s.name.as_str()), "drain: name");
            assert_eq!(v["inflight"].as_u64(), Some(s.inflight));
        }
    }

    // metrics
    check_metrics(&metrics::render(&scopes, now), &scopes, now);

    check_rfc3339(now, &rfc3339_ms(now));
});

fn parse_json(what: &str, out: &str) -> Value {
    assert!(out.ends_with("}\n"), "{what}: {out:?} does not end in }}\\n");
    let body = &out[..out.len() - 1];
    if let Some(c) = body.chars().find(|&c| (c as u32) < 0x20) {
        panic!("{what}: raw C0 control {c:?} in {out:?}");
    }
    strict_assert!(
        F1,
        first_control(body).is_none(),
        "F1: {what}: raw control character {:?} (DEL/C1 left unescaped) in {out:?}",
        first_control(body)
    );
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{what}: invalid JSON ({e}): {out:?}"))
}

fn timestamp(v: &Value, ms: u64) {
    let s = v.as_str().unwrap_or_else(|| panic!("timestamp {v}"));
    assert_eq!(s, rfc3339_ms(ms));
    check_rfc3339(ms, s);
}

fn auto_resume(v: &Value, at: Option<u64>, now: u64) {
    match at {
        Some(at) => {
            timestamp(&v["auto_resume_at"], at);
            assert_eq!(v["auto_resume_in_ms"].as_u64(), Some(at.saturating_sub(now)));
        }
        None => assert!(v["auto_resume_at"].is_null() && v["auto_resume_in_ms"].is_null()),
    }
}

fn drain_fields(doc: &Value, d: &Drain) {
    assert_eq!(doc["drained"].as_bool(), Some(d.drained));
    assert_eq!(doc["waited_ms"].as_u64(), Some(d.waited_ms));
    assert_eq!(doc["inflight"].as_u64(), Some(d.scopes.iter().map(|s| s.inflight).sum::<u64>()));
    assert_eq!(doc["error"].as_str(), (!d.drained).then_some("drain timed out"));
}

/// Prometheus text format 0.0.4, one line at a time, against the expected samples.
fn check_metrics(text: &str, scopes: &[ScopeStatus], now: u64) {
    assert!(text.ends_with('\n'), "metrics: no final newline");
    let secs = |ms: u64| ms as f64 / 1000.0;
    // (metric, scope index, le, value) in the order of the exposition.
    let mut expected: Vec<(&str, usize, Option<f64>, f64)> = Vec::new();
    type F = fn(&ScopeStatus, u64) -> f64;
    let families: [(&str, F); 11] = [
        ("intermission_paused", |s, _| if s.paused { 1.0 } else { 0.0 }),
        ("intermission_paused_seconds", |s, now| {
            if s.paused {
                now.saturating_sub(s.paused_since_ms) as f64 / 1000.0
            } else {
                0.0
            }
        }),
        ("intermission_held", |s, _| s.held as f64),
        ("intermission_oldest_held_seconds", |s, now| {
            s.oldest_held_ms.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0)
        }),
        ("intermission_inflight", |s, _| s.inflight as f64),
        ("intermission_auto_resume_timestamp_seconds", |s, _| {
            s.auto_resume_at_ms.map_or(0.0, |t| t as f64 / 1000.0)
        }),
        ("intermission_held_total", |s, _| s.held_total as f64),
        ("intermission_released_total", |s, _| s.released_total as f64),
        ("intermission_aborted_total", |s, _| s.aborted_total as f64),
        ("intermission_timed_out_total", |s, _| s.timed_out_total as f64),
        ("intermission_rejected_total", |s, _| s.rejected_total as f64),
    ];
    for (name, f) in families {
        for (i, s) in scopes.iter().enumerate() {
            expected.push((name, i, None, f(s, now)));
        }
    }
    for (i, s) in scopes.iter().enumerate() {
        let mut cumulative = 0u64;
        for (b, n) in s.hold_buckets.iter().enumerate() {
            cumulative += n;
            let le = HOLD_BUCKETS_MS.get(b).map_or(f64::INFINITY, |&ms| secs(ms));
            expected.push(("intermission_hold_seconds_bucket", i, Some(le), cumulative as f64));
        }
        expected.push(("intermission_hold_seconds_sum", i, None, secs(s.hold_sum_ms)));
        expected.push(("intermission_hold_seconds_count", i, None, cumulative as f64));
    }

    let (mut comments, mut samples) = (0, 0);
    for line in text[..text.len() - 1].split('\n') {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let (kw, name) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            assert!(
                matches!(kw, "HELP" | "TYPE") && metric_name(name),
                "metrics: comment {line:?}"
            );
            comments += 1;
            continue;
        }
        let (name, labels, value) =
            sample(line).unwrap_or_else(|| panic!("metrics: bad sample line {line:?} in\n{text}"));
        let &(ename, i, le, evalue) =
            expected.get(samples).unwrap_or_else(|| panic!("metrics: extra sample {line:?}"));
        samples += 1;
        assert_eq!(name, ename, "metrics: {line:?}");
        let want: Vec<&str> = if le.is_some() { vec!["scope", "le"] } else { vec!["scope"] };
        assert_eq!(
            labels.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(),
            want,
            "metrics: {line:?}"
        );
        // Prometheus has escapes only for \\, " and newline: other controls become '?'.
        let shown: String = scopes[i]
            .name
            .chars()
            .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
            .collect();
        assert_eq!(labels[0].1, shown, "metrics: scope label of {line:?}");
        if let Some(le) = le {
            let got = if labels[1].1 == "+Inf" {
                f64::INFINITY
            } else {
                labels[1].1.parse().unwrap_or(f64::NAN)
            };
            assert_eq!(got, le, "metrics: le of {line:?}");
        }
        assert_eq!(value, evalue, "metrics: value of {line:?}");
        // On the line as written: an escaped newline is fine, a raw \r or \t is not.
        strict_assert!(
            F2,
            first_control(line).is_none(),
            "F2: metrics: raw control character {:?} in {line:?}",
            first_control(line)
        );
    }
    assert_eq!(comments, 24, "metrics: comment lines");
    assert_eq!(samples, expected.len(), "metrics: sample lines");
}

fn metric_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `name{k="v",...} value`, label values unescaped (`\\`, `\"`, `\n`).
fn sample(line: &str) -> Option<(String, Vec<(String, String)>, f64)> {
    let open = line.find('{')?;
    let name = &line[..open];
    if !metric_name(name) {
        return None;
    }
    let mut labels = Vec::new();
    let mut chars = line[open + 1..].char_indices();
    let rest_start;
    loop {
        // key
        let mut key = String::new();
        let mut c = chars.next()?;
        if c.1 == '}' && labels.is_empty() {
            rest_start = open + 1 + c.0 + 1;
            break;
        }
        while c.1 != '=' {
            if !(c.1.is_ascii_alphanumeric() || c.1 == '_') {
                return None;
            }
            key.push(c.1);
            c = chars.next()?;
        }
        if key.is_empty() || chars.next()?.1 != '"' {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    '\\' => val.push('\\'),
                    '"' => val.push('"'),
                    'n' => val.push('\n'),
                    _ => return None,
                },
                '\n' => return None,
                ch => val.push(ch),
            }
        }
        labels.push((key, val));
        let (i, sep) = chars.next()?;
        match sep {
            ',' => continue,
            '}' => {
                rest_start = open + 1 + i + 1;
                break;
            }
            _ => return None,
        }
    }
    let value = line[rest_start..].strip_prefix(' ')?;
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v if !v.is_empty()
            && v.bytes().all(|c| {
                c.is_ascii_digit() || c == b'.' || c == b'e' || c == b'-' || c == b'+'
            }) =>
        {
            v.parse().ok()?
        }
        _ => return None,
    };
    Some((name.to_string(), labels, v))
}
