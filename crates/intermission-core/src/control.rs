//! Control requests: the command (last URI segment), the method and the arguments.
//!
//! Every way a request can be wrong maps to one [`ControlError`] with the HTTP status the
//! operator sees; nothing here changes state, so a bad request changes nothing.

use crate::text::printable;
use crate::{scope_name, time};

/// The HTTP methods the control endpoint distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Other,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    #[default]
    Status,
    /// Prometheus text exposition of every figure in status.
    Metrics,
    /// Answers once nothing is in flight.
    Drain,
    /// `enable`, or its alias `pause`.
    Pause,
    /// `disable`, or its alias `resume`.
    Resume,
    /// The status page for a browser: `ui`, or the endpoint's root (an empty last segment).
    Ui,
}

impl Command {
    fn from_segment(seg: &[u8]) -> Option<Command> {
        match seg {
            b"status" => Some(Command::Status),
            b"metrics" => Some(Command::Metrics),
            b"drain" => Some(Command::Drain),
            b"enable" | b"pause" => Some(Command::Pause),
            b"disable" | b"resume" => Some(Command::Resume),
            b"ui" | b"" => Some(Command::Ui),
            _ => None,
        }
    }

    /// The methods the command takes, as the `Allow` header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Command::Status | Command::Metrics | Command::Drain | Command::Ui => "GET, HEAD",
            Command::Pause | Command::Resume => "POST, PUT",
        }
    }

    /// Whether the command changes state: those refuse a browser's cross-site request.
    pub fn changes_state(self) -> bool {
        matches!(self, Command::Pause | Command::Resume)
    }

    fn accepts(self, m: Method) -> bool {
        match self {
            Command::Status | Command::Metrics | Command::Drain | Command::Ui => {
                matches!(m, Method::Get | Method::Head)
            }
            Command::Pause | Command::Resume => matches!(m, Method::Post | Method::Put),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Metrics => "metrics",
            Command::Drain => "drain",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Ui => "ui",
        }
    }
}

/// A well-formed control request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ControlRequest {
    pub command: Command,
    /// `None`: every scope.
    pub scope: Option<String>,
    /// `enable ... &wait=drained`: answer once nothing is in flight.
    pub wait_drained: bool,
    /// `drain` and `wait=drained`: how long to wait before answering 503.
    pub timeout_ms: Option<u64>,
    /// `enable ... &auto_resume=T`: resume by itself after that time.
    pub auto_resume_ms: Option<u64>,
}

/// How long `drain` and `wait=drained` wait when no `timeout` is given.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;

impl ControlRequest {
    /// Whether the request waits for in-flight requests to finish before it answers.
    pub fn waits(&self) -> bool {
        self.command == Command::Drain || self.wait_drained
    }

    /// The drain timeout in effect.
    pub fn drain_timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS)
    }
}

/// A refused control request: the status to answer, the message for `{"error": ...}`, and
/// for 405 the `Allow` header.
#[derive(Debug, PartialEq, Eq)]
pub struct ControlError {
    pub status: u16,
    pub message: String,
    pub allow: Option<&'static str>,
}

impl ControlError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ControlError { status: 400, message: message.into(), allow: None }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ControlError { status: 404, message: message.into(), allow: None }
    }
}

/// The longest query string looked at; longer ones are refused whole.
pub const MAX_ARGS_LEN: usize = 4096;

/// Parses a control request from its method, its (decoded) URI path and its raw query string.
pub fn parse(method: Method, path: &[u8], args: &[u8]) -> Result<ControlRequest, ControlError> {
    let segment = path.rsplit(|&c| c == b'/').next().unwrap_or_default();
    // The root is the page for a browser's GET only: a POST there, or to "resume/", is
    // still an unknown command, not a method the page does not take.
    let read = matches!(method, Method::Get | Method::Head);
    let command = Command::from_segment(segment).filter(|_| read || !segment.is_empty());
    let command = command.ok_or_else(|| {
        ControlError::not_found(format!(
            "unknown command \"{}\"; the commands are status, metrics, drain, enable (pause), \
             disable (resume) and ui",
            printable(segment)
        ))
    })?;
    if !command.accepts(method) {
        return Err(ControlError {
            status: 405,
            message: format!("{} takes {}", command.name(), command.allow()),
            allow: Some(command.allow()),
        });
    }

    let mut req = ControlRequest { command, ..ControlRequest::default() };
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in split_args(args)? {
        if !command.takes(&key) {
            return Err(ControlError::bad_request(format!(
                "unknown argument \"{}\" for {}",
                printable(key.as_bytes()),
                command.name()
            )));
        }
        if seen.contains(&key) {
            return Err(ControlError::bad_request(format!("argument \"{key}\" is repeated")));
        }
        let value = value
            .ok_or_else(|| ControlError::bad_request(format!("argument \"{key}\" has no value")))?;
        let duration = |v: &str| {
            time::parse_duration_ms(v.as_bytes())
                .map_err(|e| ControlError::bad_request(format!("argument \"{key}\": {e}")))
        };
        match key.as_str() {
            "scope" => {
                let name =
                    scope_name::validate(value.as_bytes()).map_err(ControlError::bad_request)?;
                req.scope = Some(name.to_owned());
            }
            "wait" if value == "drained" => req.wait_drained = true,
            "wait" => {
                return Err(ControlError::bad_request(format!(
                    "argument \"wait\" takes only \"drained\", not \"{}\"",
                    printable(value.as_bytes())
                )))
            }
            "timeout" => req.timeout_ms = Some(duration(&value)?),
            "auto_resume" => req.auto_resume_ms = Some(duration(&value)?),
            _ => {}
        }
        seen.push(key);
    }
    if command == Command::Pause && req.timeout_ms.is_some() && !req.wait_drained {
        return Err(ControlError::bad_request("argument \"timeout\" needs wait=drained"));
    }
    Ok(req)
}

impl Command {
    /// The arguments each command takes.
    fn takes(self, key: &str) -> bool {
        match self {
            Command::Status | Command::Metrics | Command::Resume => key == "scope",
            Command::Drain => matches!(key, "scope" | "timeout"),
            Command::Pause => matches!(key, "scope" | "wait" | "timeout" | "auto_resume"),
            Command::Ui => false,
        }
    }
}

/// Splits `a=1&b=2` into decoded pairs; a pair without `=` has no value.
fn split_args(args: &[u8]) -> Result<Vec<(String, Option<String>)>, ControlError> {
    if args.len() > MAX_ARGS_LEN {
        return Err(ControlError::bad_request(format!(
            "query string is longer than {MAX_ARGS_LEN} bytes"
        )));
    }
    let mut out = Vec::new();
    for pair in args.split(|&c| c == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|&c| c == b'=') {
            Some(i) => (&pair[..i], Some(&pair[i + 1..])),
            None => (pair, None),
        };
        let key = percent_decode(key)?;
        let value = value.map(percent_decode).transpose()?;
        out.push((key, value));
    }
    Ok(out)
}

/// Decodes `%XX` and `+`; the result must be UTF-8.
fn percent_decode(s: &[u8]) -> Result<String, ControlError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).and_then(|h| core::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| {
                    ControlError::bad_request("malformed percent-encoding in the query string")
                })?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ControlError::bad_request("the query string is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(m: Method, path: &str, args: &str) -> ControlRequest {
        parse(m, path.as_bytes(), args.as_bytes()).expect("valid request") // ok: test
    }

    fn err(m: Method, path: &str, args: &[u8]) -> ControlError {
        parse(m, path.as_bytes(), args).expect_err("invalid request")
    }

    #[test]
    fn command_is_the_last_segment() {
        assert_eq!(ok(Method::Get, "/secret/x/status", "").command, Command::Status);
        assert_eq!(ok(Method::Head, "status", "").command, Command::Status);
        assert_eq!(ok(Method::Post, "/a/enable", "").command, Command::Pause);
        assert_eq!(ok(Method::Put, "/a/pause", "").command, Command::Pause);
        assert_eq!(ok(Method::Post, "/a/disable", "").command, Command::Resume);
        assert_eq!(ok(Method::Put, "/a/resume", "").command, Command::Resume);
    }

    #[test]
    fn unknown_command_is_404() {
        assert_eq!(err(Method::Get, "/a/bogus", b"").status, 404);
        assert_eq!(err(Method::Get, "/a/UI", b"").status, 404);
        assert_eq!(err(Method::Get, "/a/ui.js", b"").status, 404);
        assert!(err(Method::Get, "/a/x", b"").message.contains("and ui"));
    }

    #[test]
    fn the_page_is_ui_or_the_root_and_only_read() {
        assert_eq!(ok(Method::Get, "/a/ui", "").command, Command::Ui);
        assert_eq!(ok(Method::Head, "/a/ui", "").command, Command::Ui);
        assert_eq!(ok(Method::Get, "/a/", "").command, Command::Ui);
        // The page's relative URLs ("status", "pause") stay under any path that ends in
        // "/", so a trailing slash anywhere shows it.
        assert_eq!(ok(Method::Get, "/a/status/", "").command, Command::Ui);
        assert_eq!(err(Method::Post, "/a/", b"").status, 404);
        assert_eq!(err(Method::Post, "/a/resume/", b"").status, 404);
        let e = err(Method::Put, "/a/ui", b"");
        assert_eq!((e.status, e.allow), (405, Some("GET, HEAD")));
        assert_eq!(err(Method::Get, "/a/ui", b"scope=a").status, 400);
        assert!(!Command::Ui.changes_state() && !Command::Status.changes_state());
        assert!(Command::Pause.changes_state() && Command::Resume.changes_state());
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let e = err(Method::Get, "/enable", b"");
        assert_eq!((e.status, e.allow), (405, Some("POST, PUT")));
        let e = err(Method::Post, "/status", b"");
        assert_eq!((e.status, e.allow), (405, Some("GET, HEAD")));
        assert_eq!(err(Method::Other, "/resume", b"").status, 405);
    }

    #[test]
    fn scope_argument() {
        assert_eq!(ok(Method::Post, "/enable", "scope=blue").scope.as_deref(), Some("blue"));
        assert_eq!(ok(Method::Post, "/enable", "&scope=b%6Cue&").scope.as_deref(), Some("blue"));
        assert_eq!(ok(Method::Get, "/status", "").scope, None);
    }

    #[test]
    fn drain_wait_timeout_and_auto_resume() {
        let r = ok(Method::Get, "/drain", "scope=a&timeout=500ms");
        assert_eq!((r.command, r.timeout_ms, r.waits()), (Command::Drain, Some(500), true));
        assert_eq!(ok(Method::Get, "/drain", "").drain_timeout_ms(), DEFAULT_DRAIN_TIMEOUT_MS);
        let r = ok(Method::Post, "/enable", "wait=drained&timeout=2s&auto_resume=2m");
        assert!(r.wait_drained && r.waits());
        assert_eq!((r.timeout_ms, r.auto_resume_ms), (Some(2000), Some(120_000)));
        assert!(!ok(Method::Post, "/pause", "auto_resume=1h").waits());
        assert_eq!(ok(Method::Get, "/metrics", "").command, Command::Metrics);
        assert_eq!(err(Method::Post, "/drain", b"").status, 405);
        assert_eq!(err(Method::Post, "/metrics", b"").allow, Some("GET, HEAD"));
    }

    #[test]
    fn bad_times_and_misplaced_arguments_are_400() {
        for (m, path, args) in [
            (Method::Get, "/drain", &b"timeout=0"[..]),
            (Method::Get, "/drain", b"timeout=-1s"),
            (Method::Get, "/drain", b"timeout=abc"),
            (Method::Get, "/drain", b"timeout=99999999999s"),
            (Method::Get, "/drain", b"auto_resume=1s"),
            (Method::Get, "/drain", b"wait=drained"),
            (Method::Post, "/enable", b"auto_resume=0"),
            (Method::Post, "/enable", b"wait=foo"),
            (Method::Post, "/enable", b"wait="),
            (Method::Post, "/enable", b"timeout=5s"),
            (Method::Post, "/enable", b"wait=drained&wait=drained"),
            (Method::Post, "/disable", b"auto_resume=1s"),
            (Method::Post, "/disable", b"timeout=1s"),
            (Method::Get, "/status", b"timeout=1s"),
            (Method::Get, "/metrics", b"wait=drained"),
        ] {
            let e = err(m, path, args);
            assert_eq!(e.status, 400, "{path}?{}: {}", String::from_utf8_lossy(args), e.message);
        }
    }

    #[test]
    fn malformed_arguments_are_400() {
        for args in [
            &b"scope=bad!name"[..],
            b"scope=",
            b"scope",
            b"scope=a&scope=a",
            b"foo=1",
            b"scope=%zz",
            b"scope=%4",
            b"scope=%ff",
            b"scope=a+b",
            b"\xff=1",
        ] {
            let e = err(Method::Post, "/enable", args);
            assert_eq!(e.status, 400, "{args:?}: {}", e.message);
        }
        assert_eq!(err(Method::Post, "/enable", &[b'a'; MAX_ARGS_LEN + 1]).status, 400);
    }

    #[test]
    fn errors_quote_input_escaped_and_short() {
        let e = err(Method::Get, "/\x01abc", b"");
        assert!(e.message.contains("\\x01abc"), "{}", e.message);
        let long = format!("/{}", "z".repeat(500));
        assert!(err(Method::Get, &long, b"").message.len() < 200);
    }
}
