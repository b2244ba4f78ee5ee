//! The control endpoint's JSON answers, written by hand: the documents are small and flat.

use core::fmt::Write;

use crate::shared::ScopeStatus;
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
        match s.oldest_held_ms {
            Some(t) => {
                let _ = write!(out, "{}", now_ms.saturating_sub(t));
            }
            None => out.push_str("null"),
        }
        let _ = write!(
            out,
            ",\"counters\":{{\"held\":{},\"released\":{},\"aborted\":{}}}}}",
            s.held_total, s.released_total, s.aborted_total
        );
    }
    out.push_str("]}\n");
    out
}

/// One scope's outcome of a pause or a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub paused: bool,
    pub changed: bool,
    /// For a pause, the requests held now; for a resume, the requests it releases.
    pub held: u64,
}

/// `POST enable|disable`: what each scope did.
pub fn change(action: &str, changes: &[Change]) -> String {
    let mut out = String::from("{\"action\":");
    string(&mut out, action);
    out.push_str(",\"scopes\":[");
    let count = if action == "resume" { "released" } else { "held" };
    for (n, c) in changes.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        string(&mut out, &c.name);
        let _ = write!(
            out,
            ",\"paused\":{},\"changed\":{},\"{count}\":{}}}",
            c.paused, c.changed, c.held
        );
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
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(name: &str, paused_since_ms: u64, oldest: Option<u64>) -> ScopeStatus {
        ScopeStatus {
            name: name.into(),
            paused: paused_since_ms != 0,
            paused_since_ms,
            held: 2,
            oldest_held_ms: oldest,
            held_total: 7,
            released_total: 4,
            aborted_total: 1,
        }
    }

    #[test]
    fn status_of_a_paused_and_a_running_scope() {
        let doc = status(&[scope("a", 1_000, Some(1_500)), scope("b", 0, None)], 3_000);
        assert_eq!(
            doc,
            "{\"scopes\":[{\"name\":\"a\",\"paused\":true,\
             \"paused_since\":\"1970-01-01T00:00:01.000Z\",\"paused_ms\":2000,\"held\":2,\
             \"oldest_held_ms\":1500,\"counters\":{\"held\":7,\"released\":4,\"aborted\":1}},\
             {\"name\":\"b\",\"paused\":false,\"paused_since\":null,\"paused_ms\":0,\"held\":2,\
             \"oldest_held_ms\":null,\"counters\":{\"held\":7,\"released\":4,\"aborted\":1}}]}\n"
        );
        assert_eq!(status(&[], 0), "{\"scopes\":[]}\n");
    }

    #[test]
    fn change_names_the_count_after_the_action() {
        let c = Change { name: "a".into(), paused: false, changed: true, held: 3 };
        assert_eq!(
            change("resume", &[c.clone()]),
            "{\"action\":\"resume\",\"scopes\":[{\"name\":\"a\",\"paused\":false,\
             \"changed\":true,\"released\":3}]}\n"
        );
        assert!(change("pause", &[c]).contains("\"held\":3"));
    }

    #[test]
    fn error_escapes_its_message() {
        assert_eq!(error("a \"b\"\\\n\u{1}"), "{\"error\":\"a \\\"b\\\"\\\\\\n\\u0001\"}\n");
    }
}
