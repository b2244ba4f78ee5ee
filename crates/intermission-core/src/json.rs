//! The control endpoint's JSON answers, written by hand: the documents are small and flat.

use core::fmt::Write;

use crate::shared::{Blocker, ScopeStatus};
use crate::time::rfc3339_ms;

/// `GET status`: every scope with its state, gauges and counters.
pub fn status(scopes: &[ScopeStatus], now_ms: u64) -> String {
    let mut out = String::from("{\"scopes\":[");
    for (n, s) in scopes.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        string(&mut out, &s.name);
        let _ = write!(out, ",\"paused\":{}", s.paused);
        if s.paused && s.paused_since_ms != 0 {
            out.push_str(",\"paused_since\":");
            string(&mut out, &rfc3339_ms(s.paused_since_ms));
            let _ = write!(out, ",\"paused_ms\":{}", now_ms.saturating_sub(s.paused_since_ms));
        } else {
            out.push_str(",\"paused_since\":null,\"paused_ms\":0");
        }
        let _ = write!(out, ",\"held\":{},\"oldest_held_ms\":", s.held);
        age(&mut out, s.oldest_held_ms, now_ms);
        let _ = write!(
            out,
            ",\"inflight\":{},\"upgraded\":{},\"streams\":{}",
            s.inflight, s.upgraded, s.streams
        );
        blockers(&mut out, &s.blockers, now_ms);
        auto_resume(&mut out, s.auto_resume_at_ms, now_ms);
        down(&mut out, s, now_ms);
        let _ = write!(
            out,
            ",\"counters\":{{\"held\":{},\"released\":{},\"aborted\":{},\"timed_out\":{},\
             \"rejected\":{},\"failed\":{},\"retried\":{},\"gave_up\":{},\"went_down\":{},\
             \"checks\":{}}}}}",
            s.held_total,
            s.released_total,
            s.aborted_total,
            s.timed_out_total,
            s.rejected_total,
            s.failed_total,
            s.retried_total,
            s.gave_up_total,
            s.went_down_total,
            s.checks_total
        );
    }
    out.push_str("]}\n");
    out
}

/// `"down":..,"down_since":..,"down_ms":..,"last_error":..`: hold on failure.
fn down(out: &mut String, s: &ScopeStatus, now_ms: u64) {
    let _ = write!(out, ",\"down\":{}", s.down);
    if s.down && s.down_since_ms != 0 {
        out.push_str(",\"down_since\":");
        string(out, &rfc3339_ms(s.down_since_ms));
        let _ = write!(out, ",\"down_ms\":{}", now_ms.saturating_sub(s.down_since_ms));
    } else {
        out.push_str(",\"down_since\":null,\"down_ms\":0");
    }
    out.push_str(",\"last_error\":");
    match s.fail_status {
        0 => out.push_str("null"),
        504 => string(out, "connecting to the backend timed out (504)"),
        st => string(out, &format!("no connection to the backend ({st})")),
    }
}

/// `now - t` in ms, or null.
fn age(out: &mut String, t: Option<u64>, now_ms: u64) {
    match t {
        Some(t) => {
            let _ = write!(out, "{}", now_ms.saturating_sub(t));
        }
        None => out.push_str("null"),
    }
}

/// `"auto_resume_at":...,"auto_resume_in_ms":...`, both null when no deadline is set.
fn auto_resume(out: &mut String, at: Option<u64>, now_ms: u64) {
    match at {
        Some(at) => {
            out.push_str(",\"auto_resume_at\":");
            string(out, &rfc3339_ms(at));
            let _ = write!(out, ",\"auto_resume_in_ms\":{}", at.saturating_sub(now_ms));
        }
        None => out.push_str(",\"auto_resume_at\":null,\"auto_resume_in_ms\":null"),
    }
}

/// `,"blockers":[{"method":..,"path":..,"age_ms":..,"pid":..},...]`.
fn blockers(out: &mut String, list: &[Blocker], now_ms: u64) {
    out.push_str(",\"blockers\":[");
    for (n, b) in list.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"method\":");
        string(out, &b.method);
        out.push_str(",\"path\":");
        string(out, &b.path);
        let _ =
            write!(out, ",\"age_ms\":{},\"pid\":{}}}", now_ms.saturating_sub(b.since_ms), b.pid);
    }
    out.push(']');
}

/// One scope's outcome of a pause or a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub paused: bool,
    pub changed: bool,
    /// For a pause, the requests held now; for a resume, the requests it releases.
    pub held: u64,
    /// For a pause, the auto-resume deadline (unix ms) it set.
    pub auto_resume_at_ms: Option<u64>,
    /// The scope is down (`intermission_on_failure hold`): a resume releases nothing, its
    /// held requests (`held`) wait for a readiness check to find the backend.
    pub down: bool,
}

/// How a wait for the in-flight requests ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub drained: bool,
    pub waited_ms: u64,
    /// Each waited-for scope with what is in flight in it.
    pub scopes: Vec<DrainScope>,
    pub now_ms: u64,
}

/// A waited-for scope: the requests the drain waits for, those it does not (upgraded
/// connections, streams), and the oldest of the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainScope {
    pub name: String,
    pub inflight: u64,
    pub upgraded: u64,
    pub streams: u64,
    pub blockers: Vec<Blocker>,
}

impl DrainScope {
    /// `,"inflight":..,"upgraded":..,"streams":..,"blockers":[..]`.
    fn fields(&self, out: &mut String, now_ms: u64) {
        let _ = write!(
            out,
            ",\"inflight\":{},\"upgraded\":{},\"streams\":{}",
            self.inflight, self.upgraded, self.streams
        );
        blockers(out, &self.blockers, now_ms);
    }
}

impl Drain {
    fn inflight(&self) -> u64 {
        self.scopes.iter().fold(0u64, |t, s| t.saturating_add(s.inflight))
    }

    /// `"drained":..,"waited_ms":..,"inflight":..`.
    fn fields(&self, out: &mut String) {
        let _ = write!(
            out,
            "\"drained\":{},\"waited_ms\":{},\"inflight\":{}",
            self.drained,
            self.waited_ms,
            self.inflight()
        );
    }

    fn error(&self) -> Option<&'static str> {
        (!self.drained).then_some("drain timed out")
    }
}

/// `GET drain`: whether every waited-for scope drained, and what is left in flight.
pub fn drain(d: &Drain) -> String {
    let mut out = String::from("{");
    d.fields(&mut out);
    if let Some(e) = d.error() {
        out.push_str(",\"error\":");
        string(&mut out, e);
    }
    out.push_str(",\"scopes\":[");
    for (n, s) in d.scopes.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        string(&mut out, &s.name);
        s.fields(&mut out, d.now_ms);
        out.push('}');
    }
    out.push_str("]}\n");
    out
}

/// `POST enable|disable`: what each scope did, for `wait=drained` how the wait ended, and
/// with a state file whether the change was written to it (`persisted`, and the reason in
/// `error` when it was not).
pub fn change(
    action: &str,
    changes: &[Change],
    now_ms: u64,
    drain: Option<&Drain>,
    persist: Option<&Result<(), String>>,
) -> String {
    let mut out = String::from("{\"action\":");
    string(&mut out, action);
    let mut errors: Vec<&str> = Vec::new();
    if let Some(d) = drain {
        out.push(',');
        d.fields(&mut out);
        errors.extend(d.error());
    }
    if let Some(p) = persist {
        let _ = write!(out, ",\"persisted\":{}", p.is_ok());
        if let Err(e) = p {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        out.push_str(",\"error\":");
        string(&mut out, &errors.join("; "));
    }
    out.push_str(",\"scopes\":[");
    let count = if action == "resume" { "released" } else { "held" };
    for (n, c) in changes.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        string(&mut out, &c.name);
        let _ = match (action, c.down) {
            ("resume", true) => write!(
                out,
                ",\"paused\":{},\"changed\":{},\"released\":0,\"down\":true,\"waiting\":{}",
                c.paused, c.changed, c.held
            ),
            (_, down) => write!(
                out,
                ",\"paused\":{},\"changed\":{},\"{count}\":{}{}",
                c.paused,
                c.changed,
                c.held,
                if down { ",\"down\":true" } else { "" }
            ),
        };
        if c.paused {
            auto_resume(&mut out, c.auto_resume_at_ms, now_ms);
        }
        if let Some(s) = drain.and_then(|d| d.scopes.iter().find(|s| s.name == c.name)) {
            s.fields(&mut out, now_ms);
        }
        out.push('}');
    }
    out.push_str("]}\n");
    out
}

/// `{"error": "..."}`.
pub fn error(message: &str) -> String {
    let mut out = String::from("{\"error\":");
    string(&mut out, message);
    out.push_str("}\n");
    out
}

/// Appends `s` as a JSON string literal.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // C0, DEL and C1: no raw control character in a response.
            c if (c as u32) < 0x20 || ('\u{7f}'..='\u{9f}').contains(&c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::shared::HOLD_BUCKETS_MS;

    pub(crate) fn scope(name: &str, paused_since_ms: u64, oldest: Option<u64>) -> ScopeStatus {
        ScopeStatus {
            name: name.into(),
            paused: paused_since_ms != 0,
            paused_since_ms,
            held: 2,
            oldest_held_ms: oldest,
            inflight: 5,
            upgraded: 1,
            streams: 0,
            blockers: Vec::new(),
            auto_resume_at_ms: None,
            held_total: 7,
            released_total: 4,
            aborted_total: 1,
            timed_out_total: 3,
            rejected_total: 2,
            down: false,
            down_since_ms: 0,
            fail_status: 0,
            failed_total: 0,
            retried_total: 0,
            gave_up_total: 0,
            went_down_total: 0,
            checks_total: 0,
            hold_buckets: [0; HOLD_BUCKETS_MS.len() + 1],
            hold_sum_ms: 0,
        }
    }

    #[test]
    fn status_of_a_paused_and_a_running_scope() {
        let mut a = scope("a", 1_000, Some(1_500));
        a.auto_resume_at_ms = Some(4_000);
        a.blockers.push(Blocker {
            scope: 0,
            since_ms: 500,
            method: "GET".into(),
            path: "/a\"b".into(),
            pid: 42,
        });
        let doc = status(&[a, scope("b", 0, None)], 3_000);
        assert_eq!(
            doc,
            "{\"scopes\":[{\"name\":\"a\",\"paused\":true,\
             \"paused_since\":\"1970-01-01T00:00:01.000Z\",\"paused_ms\":2000,\"held\":2,\
             \"oldest_held_ms\":1500,\"inflight\":5,\"upgraded\":1,\"streams\":0,\
             \"blockers\":[{\"method\":\"GET\",\"path\":\"/a\\\"b\",\"age_ms\":2500,\"pid\":42}],\
             \"auto_resume_at\":\"1970-01-01T00:00:04.000Z\",\"auto_resume_in_ms\":1000,\
             \"down\":false,\"down_since\":null,\"down_ms\":0,\"last_error\":null,\
             \"counters\":{\"held\":7,\"released\":4,\"aborted\":1,\"timed_out\":3,\
             \"rejected\":2,\"failed\":0,\"retried\":0,\"gave_up\":0,\"went_down\":0,\
             \"checks\":0}},\
             {\"name\":\"b\",\"paused\":false,\"paused_since\":null,\"paused_ms\":0,\"held\":2,\
             \"oldest_held_ms\":null,\"inflight\":5,\"upgraded\":1,\"streams\":0,\
             \"blockers\":[],\"auto_resume_at\":null,\
             \"auto_resume_in_ms\":null,\"down\":false,\"down_since\":null,\"down_ms\":0,\
             \"last_error\":null,\"counters\":{\"held\":7,\"released\":4,\"aborted\":1,\
             \"timed_out\":3,\"rejected\":2,\"failed\":0,\"retried\":0,\"gave_up\":0,\
             \"went_down\":0,\"checks\":0}}]}\n"
        );
        assert_eq!(status(&[], 0), "{\"scopes\":[]}\n");
    }

    #[test]
    fn change_names_the_count_after_the_action() {
        let c = Change {
            name: "a".into(),
            paused: false,
            changed: true,
            held: 3,
            auto_resume_at_ms: None,
            down: false,
        };
        assert_eq!(
            change("resume", &[c.clone()], 0, None, None),
            "{\"action\":\"resume\",\"scopes\":[{\"name\":\"a\",\"paused\":false,\
             \"changed\":true,\"released\":3}]}\n"
        );
        let p = Change { paused: true, auto_resume_at_ms: Some(61_000), ..c.clone() };
        assert_eq!(
            change("pause", &[p], 1_000, None, None),
            "{\"action\":\"pause\",\"scopes\":[{\"name\":\"a\",\"paused\":true,\
             \"changed\":true,\"held\":3,\"auto_resume_at\":\"1970-01-01T00:01:01.000Z\",\
             \"auto_resume_in_ms\":60000}]}\n"
        );
        // Down: the resume releases none, they wait for the backend.
        let d = Change { down: true, ..c.clone() };
        assert_eq!(
            change("resume", &[d.clone()], 0, None, None),
            "{\"action\":\"resume\",\"scopes\":[{\"name\":\"a\",\"paused\":false,\
             \"changed\":true,\"released\":0,\"down\":true,\"waiting\":3}]}\n"
        );
        let dp = Change { paused: true, ..d };
        assert_eq!(
            change("pause", &[dp], 0, None, None),
            "{\"action\":\"pause\",\"scopes\":[{\"name\":\"a\",\"paused\":true,\
             \"changed\":true,\"held\":3,\"down\":true,\"auto_resume_at\":null,\
             \"auto_resume_in_ms\":null}]}\n"
        );
    }

    #[test]
    fn drain_documents() {
        let sc = |name: &str, inflight: u64| DrainScope {
            name: name.into(),
            inflight,
            ..Default::default()
        };
        let d = Drain { drained: true, waited_ms: 12, scopes: vec![sc("a", 0)], now_ms: 0 };
        assert_eq!(
            drain(&d),
            "{\"drained\":true,\"waited_ms\":12,\"inflight\":0,\
             \"scopes\":[{\"name\":\"a\",\"inflight\":0,\"upgraded\":0,\"streams\":0,\
             \"blockers\":[]}]}\n"
        );
        let mut b = sc("b", 2);
        b.upgraded = 3;
        b.blockers.push(Blocker {
            scope: 1,
            since_ms: 100,
            method: "GET".into(),
            path: "/slow".into(),
            pid: 7,
        });
        let d = Drain { drained: false, waited_ms: 500, scopes: vec![sc("a", 1), b], now_ms: 1100 };
        assert_eq!(
            drain(&d),
            "{\"drained\":false,\"waited_ms\":500,\"inflight\":3,\
             \"error\":\"drain timed out\",\"scopes\":[{\"name\":\"a\",\"inflight\":1,\
             \"upgraded\":0,\"streams\":0,\"blockers\":[]},\
             {\"name\":\"b\",\"inflight\":2,\"upgraded\":3,\"streams\":0,\
             \"blockers\":[{\"method\":\"GET\",\"path\":\"/slow\",\"age_ms\":1000,\"pid\":7}]}]}\n"
        );
        let c = Change {
            name: "a".into(),
            paused: true,
            changed: true,
            held: 0,
            auto_resume_at_ms: None,
            down: false,
        };
        let doc = change("pause", &[c.clone()], 0, Some(&d), None);
        assert_eq!(
            doc,
            "{\"action\":\"pause\",\"drained\":false,\"waited_ms\":500,\"inflight\":3,\
             \"error\":\"drain timed out\",\"scopes\":[{\"name\":\"a\",\"paused\":true,\
             \"changed\":true,\"held\":0,\"auto_resume_at\":null,\"auto_resume_in_ms\":null,\
             \"inflight\":1,\"upgraded\":0,\"streams\":0,\"blockers\":[]}]}\n"
        );
        let failed = Err("could not write the state file".to_owned());
        let doc = change("pause", &[c.clone()], 0, Some(&d), Some(&failed));
        assert!(doc.starts_with(
            "{\"action\":\"pause\",\"drained\":false,\"waited_ms\":500,\"inflight\":3,\
             \"persisted\":false,\"error\":\"drain timed out; could not write the state file\",\
             \"scopes\":["
        ));
        let doc = change("pause", &[c], 0, None, Some(&Ok(())));
        assert!(doc.starts_with("{\"action\":\"pause\",\"persisted\":true,\"scopes\":["));
    }

    #[test]
    fn error_escapes_its_message() {
        assert_eq!(error("a \"b\"\\\n\u{1}"), "{\"error\":\"a \\\"b\\\"\\\\\\n\\u0001\"}\n");
        assert_eq!(error("\u{7f}\u{9b}\u{a0}"), "{\"error\":\"\\u007f\\u009b\u{a0}\"}\n");
    }
}
