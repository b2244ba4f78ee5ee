//! The state file (`intermission_state_file`): the paused scopes, so that a full restart of
//! nginx (a crash, `systemctl restart`) in the middle of a maintenance does not open the
//! gates onto a backend that is down.
//!
//! ```text
//! ngx_http_intermission_module state 1
//! writer <the generation id of the nginx that wrote it, hex>
//! paused <scope> <paused since, unix ms> <auto-resume at, unix ms, or ->
//! ```
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

/// What a state file says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub writer: Option<u64>,
    pub entries: Vec<Entry>,
}

pub fn render(writer: u64, entries: &[Entry]) -> String {
    let mut out = format!("{HEADER}\nwriter {writer:x}\n");
    for e in entries {
        let auto = e.auto_resume_at_ms.map_or("-".to_owned(), |t| t.to_string());
        out.push_str(&format!("paused {} {} {}\n", e.scope, e.paused_since_ms, auto));
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
        let [kind, scope, since, auto] = f[..] else { return Err(bad()) };
        if kind != "paused" {
            return Err(bad());
        }
        let scope =
            scope_name::validate(scope.as_bytes()).map_err(|e| format!("line {}: {e}", n + 2))?;
        let number = |s: &str| s.parse::<u64>().ok().filter(|&v| v > 0);
        let since = number(since).ok_or_else(bad)?;
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
    Ok(State { writer, entries: out })
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
        let text = render(0xab12, &entries);
        assert_eq!(
            text,
            "ngx_http_intermission_module state 1\nwriter ab12\npaused default 1000 -\n\
             paused b-2 2000 9000\n"
        );
        assert_eq!(parse(text.as_bytes()), Ok(State { writer: Some(0xab12), entries }));
        let empty = State { writer: Some(1), entries: vec![] };
        assert_eq!(parse(render(1, &[]).as_bytes()), Ok(empty));
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
        ] {
            assert!(parse(text).is_err(), "{}", String::from_utf8_lossy(text));
        }
    }
}
