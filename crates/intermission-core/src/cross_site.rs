//! Whether a state-changing control request (pause, resume) may come from where it comes
//! from: a browser's request made on behalf of another site is refused.
//!
//! A page on any site can make a visitor's browser POST to the control endpoint (a form, or
//! a `fetch` in `no-cors` mode: neither needs a CORS preflight), and the browser attaches the
//! basic-auth credentials it has cached for the endpoint, and `allow 127.0.0.1` passes when
//! the browser runs on the machine. What such a request cannot hide is where it comes from:
//! browsers send `Sec-Fetch-Site` (and `Origin` on every POST) and no page can change them.
//! The decision is Go's `http.CrossOriginProtection`: `Sec-Fetch-Site` if the browser sent
//! it, else `Origin` against `Host`; a request with neither (curl, intermissionctl, any
//! client that is not a browser) is not a cross-site one and passes.

use crate::control::ControlError;
use crate::text::printable;

/// The request headers the decision reads, as the client sent them (first occurrence).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Headers<'a> {
    pub sec_fetch_site: Option<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
}

/// `Ok` when the request is the endpoint's own page's (same origin), the user's own
/// (`Sec-Fetch-Site: none`: typed, a bookmark) or no browser's; a 403 otherwise.
pub fn check(h: &Headers<'_>) -> Result<(), ControlError> {
    if let Some(site) = h.sec_fetch_site {
        let site = trim(site);
        if site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none") {
            return Ok(());
        }
        return Err(refused(format!("Sec-Fetch-Site is \"{}\"", printable(site))));
    }
    let Some(origin) = h.origin.map(trim) else { return Ok(()) };
    match (authority(origin), h.host.map(trim)) {
        (Some((scheme, auth)), Some(host)) if same_authority(scheme, auth, host) => Ok(()),
        (_, Some(host)) => Err(refused(format!(
            "Origin \"{}\" is not this endpoint's (Host \"{}\")",
            printable(origin),
            printable(host)
        ))),
        (_, None) => Err(refused(format!("Origin \"{}\" and no Host", printable(origin)))),
    }
}

fn refused(why: String) -> ControlError {
    ControlError {
        status: 403,
        message: format!(
            "refused a cross-site request ({why}): pause and resume take a browser's request \
             only from the endpoint's own page"
        ),
        allow: None,
    }
}

/// `scheme://host[:port]` -> (scheme, `host[:port]`); `null` and anything with a path,
/// user info or an empty host -> `None` (never the same origin).
fn authority(origin: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = origin.windows(3).position(|w| w == b"://")?;
    let (scheme, auth) = (&origin[..at], &origin[at + 3..]);
    if scheme.is_empty() || auth.is_empty() || auth.iter().any(|&c| matches!(c, b'/' | b'@')) {
        return None;
    }
    Some((scheme, auth))
}

/// Whether the Origin's `host[:port]` names the same authority as Host, a default port
/// being the same as none.
fn same_authority(scheme: &[u8], origin: &[u8], host: &[u8]) -> bool {
    let default = if scheme.eq_ignore_ascii_case(b"https") { &b":443"[..] } else { b":80" };
    let bare = |a: &'_ [u8]| -> Vec<u8> {
        let a = a.strip_suffix(default).unwrap_or(a);
        a.to_ascii_lowercase()
    };
    !host.is_empty() && bare(origin) == bare(host)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(site: Option<&'a str>, origin: Option<&'a str>, host: Option<&'a str>) -> Headers<'a> {
        Headers {
            sec_fetch_site: site.map(str::as_bytes),
            origin: origin.map(str::as_bytes),
            host: host.map(str::as_bytes),
        }
    }

    fn status(site: Option<&str>, origin: Option<&str>, host: Option<&str>) -> u16 {
        check(&h(site, origin, host)).err().map_or(200, |e| e.status)
    }

    #[test]
    fn no_browser_headers_pass() {
        // curl, intermissionctl: neither header.
        assert_eq!(status(None, None, Some("127.0.0.1:8081")), 200);
        assert_eq!(status(None, None, None), 200);
    }

    #[test]
    fn sec_fetch_site_decides_when_present() {
        assert_eq!(status(Some("same-origin"), None, Some("a")), 200);
        assert_eq!(status(Some("none"), None, Some("a")), 200);
        assert_eq!(status(Some(" Same-Origin "), None, Some("a")), 200);
        // A sibling port or subdomain is the same site, not the same origin.
        assert_eq!(status(Some("same-site"), None, Some("a")), 403);
        assert_eq!(status(Some("cross-site"), None, Some("a")), 403);
        assert_eq!(status(Some(""), None, Some("a")), 403);
        assert_eq!(status(Some("bogus"), None, Some("a")), 403);
        // It wins over Origin either way: the browser knows the origins, a proxy may have
        // rewritten Host.
        assert_eq!(status(Some("cross-site"), Some("http://a"), Some("a")), 403);
        assert_eq!(status(Some("same-origin"), Some("http://a"), Some("b")), 200);
    }

    #[test]
    fn origin_must_match_host() {
        assert_eq!(status(None, Some("http://127.0.0.1:8081"), Some("127.0.0.1:8081")), 200);
        assert_eq!(status(None, Some("http://CTL.example"), Some("ctl.example")), 200);
        assert_eq!(status(None, Some("http://ctl.example"), Some("ctl.example:80")), 200);
        assert_eq!(status(None, Some("https://ctl.example:443"), Some("ctl.example")), 200);
        assert_eq!(status(None, Some("http://[::1]:8081"), Some("[::1]:8081")), 200);
        for (origin, host) in [
            ("http://evil.test:8081", "127.0.0.1:8081"),
            ("http://127.0.0.1:8080", "127.0.0.1:8081"),
            ("http://127.0.0.1", "127.0.0.1:8081"),
            ("https://ctl.example", "ctl.example:80"),
            ("null", "127.0.0.1"),
            ("", "127.0.0.1"),
            ("http://", "127.0.0.1"),
            ("http://a/b", "a"),
            ("http://u@a", "a"),
            ("a", "a"),
            ("http://a", ""),
        ] {
            assert_eq!(status(None, Some(origin), Some(host)), 403, "{origin} vs {host}");
        }
        assert_eq!(status(None, Some("http://a"), None), 403);
    }

    #[test]
    fn refusal_quotes_the_headers_escaped() {
        let e = check(&h(None, Some("http://x\u{1b}[31m"), Some("y"))).unwrap_err();
        assert_eq!((e.status, e.allow), (403, None));
        assert!(e.message.contains("\\x1b[31m"), "{}", e.message);
        assert!(e.message.contains("Host \"y\""), "{}", e.message);
        let e = check(&h(Some("cross-site"), None, None)).unwrap_err();
        assert!(e.message.contains("Sec-Fetch-Site is \"cross-site\""), "{}", e.message);
    }
}
