//! The state file (`intermission_state_file`): the paused scopes, so that a full restart of
//! nginx (a crash, `systemctl restart`) in the middle of a maintenance does not open the
//! gates onto a backend that is down; and the scopes that are down (`intermission_on_failure
//! hold`), so that a binary upgrade or a restart during an outage does not send the first
//! requests of the new zone into the failure.
//!
//! ```text
//! ngx_http_intermission_module state 1
//! writer <the generation id of the nginx that wrote it, hex>
//! paused <scope> <paused since, unix ms> <auto-resume at, unix ms, or ->
//! down <scope> <down since, unix ms> <the status nginx would answer, 502 503 or 504>
//! ```
//!
//! `down` lines are written only while a scope is down: a version of the module that does
//! not know them reads such a file as corrupt (and starts unpaused), so a downgrade during
//! an outage is the one case that loses a pause.
//!
//! The `writer` line lets a generation tell its own file (a copy of its zone, never a reason
//! to change it) from one another generation wrote during a binary upgrade. A file without
//! it (written by hand, or by an older version) counts as another generation's.

use crate::scope_name;

const HEADER: &str = "ngx_http_intermission_module state 1";

/// A paused scope as the file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub scope: String,
    pub paused_since_ms: u64,
    pub auto_resume_at_ms: Option<u64>,
}

/// A scope that is down as the file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    pub scope: String,
    pub since_ms: u64,
    pub status: u32,
}

/// What a state file says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub writer: Option<u64>,
    pub entries: Vec<Entry>,
    pub down: Vec<Down>,
}

pub fn render(writer: u64, entries: &[Entry], down: &[Down]) -> String {
    let mut out = format!("{HEADER}\nwriter {writer:x}\n");
    for e in entries {
        let auto = e.auto_resume_at_ms.map_or("-".to_owned(), |t| t.to_string());
        out.push_str(&format!("paused {} {} {}\n", e.scope, e.paused_since_ms, auto));
    }
    for d in down {
        out.push_str(&format!("down {} {} {}\n", d.scope, d.since_ms, d.status));
    }
    out
}

/// Parses a state file; any line it does not understand makes the whole file corrupt, so
/// that nginx reports it and starts unpaused rather than half-restored.
pub fn parse(text: &[u8]) -> Result<State, String> {
    let text = core::str::from_utf8(text).map_err(|_| "not UTF-8".to_owned())?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("the first line is not \"{HEADER}\""));
    }
    let mut out = Vec::new();
    let mut down: Vec<Down> = Vec::new();
    let mut writer = None;
    for (n, line) in lines.enumerate() {
        let bad = || format!("line {} is malformed", n + 2);
        if let Some(id) = line.strip_prefix("writer ") {
            if n != 0 || id.is_empty() || id.len() > 16 {
                return Err(bad());
            }
            writer = Some(u64::from_str_radix(id, 16).map_err(|_| bad())?);
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [kind, scope, since, last] = f[..] else { return Err(bad()) };
        if kind != "paused" && kind != "down" {
            return Err(bad());
        }
        let scope =
            scope_name::validate(scope.as_bytes()).map_err(|e| format!("line {}: {e}", n + 2))?;
        let number = |s: &str| s.parse::<u64>().ok().filter(|&v| v > 0);
        let since = number(since).ok_or_else(bad)?;
        if kind == "down" {
            let status = match last {
                "502" | "503" | "504" => last.parse().map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            if down.iter().any(|d| d.scope == scope) {
                return Err(format!("line {}: scope \"{scope}\" is down twice", n + 2));
            }
            down.push(Down { scope: scope.to_owned(), since_ms: since, status });
            continue;
        }
        let auto = last;
        let auto = match auto {
            "-" => None,
            t => Some(number(t).ok_or_else(bad)?),
        };
        if out.iter().any(|e: &Entry| e.scope == scope) {
            return Err(format!("line {}: scope \"{scope}\" is repeated", n + 2));
        }
        out.push(Entry {
            scope: scope.to_owned(),
            paused_since_ms: since,
            auto_resume_at_ms: auto,
        });
    }
    Ok(State { writer, entries: out, down })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let entries = vec![
            Entry { scope: "default".into(), paused_since_ms: 1_000, auto_resume_at_ms: None },
            Entry { scope: "b-2".into(), paused_since_ms: 2_000, auto_resume_at_ms: Some(9_000) },
        ];
        let down = vec![Down { scope: "b-2".into(), since_ms: 3_000, status: 504 }];
        let text = render(0xab12, &entries, &down);
        assert_eq!(
            text,
            "ngx_http_intermission_module state 1\nwriter ab12\npaused default 1000 -\n\
             paused b-2 2000 9000\ndown b-2 3000 504\n"
        );
        assert_eq!(parse(text.as_bytes()), Ok(State { writer: Some(0xab12), entries, down }));
        let empty = State { writer: Some(1), entries: vec![], down: vec![] };
        assert_eq!(parse(render(1, &[], &[]).as_bytes()), Ok(empty));
        // Down and not paused, and the file of a version without down lines.
        let only = parse(b"ngx_http_intermission_module state 1\ndown a 5 502\n");
        assert_eq!(only.map(|s| (s.entries.len(), s.down.len())), Ok((0, 1)));
        // Without a writer: written by hand or by an older version.
        let old = parse(b"ngx_http_intermission_module state 1\npaused a 5 -\n");
        assert_eq!(old.map(|s| (s.writer, s.entries.len())), Ok((None, 1)));
    }

    #[test]
    fn refuses_anything_else() {
        for text in [
            &b""[..],
            b"garbage\n",
            b"ngx_http_intermission_module state 2\n",
            b"ngx_http_intermission_module state 1\npaused default 1000\n",
            b"ngx_http_intermission_module state 1\npaused default x -\n",
            b"ngx_http_intermission_module state 1\npaused default 0 -\n",
            b"ngx_http_intermission_module state 1\npaused bad/name 1 -\n",
            b"ngx_http_intermission_module state 1\nresumed default 1 -\n",
            b"ngx_http_intermission_module state 1\npaused a 1 -\npaused a 2 -\n",
            b"ngx_http_intermission_module state 1\npaused a 1 -1\n",
            b"ngx_http_intermission_module state 1\n\xff\n",
            b"ngx_http_intermission_module state 1\nwriter zz\n",
            b"ngx_http_intermission_module state 1\nwriter \n",
            b"ngx_http_intermission_module state 1\npaused a 1 -\nwriter 1\n",
            b"ngx_http_intermission_module state 1\npaused on 1 -\n",
            b"ngx_http_intermission_module state 1\ndown a 1 500\n",
            b"ngx_http_intermission_module state 1\ndown a 1 -\n",
            b"ngx_http_intermission_module state 1\ndown a 0 502\n",
            b"ngx_http_intermission_module state 1\ndown a 1 502\ndown a 2 504\n",
            b"ngx_http_intermission_module state 1\ndown a 1\n",
        ] {
            assert!(parse(text).is_err(), "{}", String::from_utf8_lossy(text));
        }
    }
}
