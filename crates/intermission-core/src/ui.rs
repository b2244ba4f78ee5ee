//! The control endpoint's status page (`GET <endpoint>/` or `GET <endpoint>/ui`): one
//! self-contained HTML document, `ui/status.html`, and the headers it is served with.
//!
//! The page draws everything from the `status` JSON with DOM text (never markup from data),
//! and its Content-Security-Policy lets nothing but its own inline style and script run,
//! named by their SHA-256, computed here from the asset so that they cannot go stale.

use std::sync::OnceLock;

use crate::sha256;

/// The page: its style and script inline, nothing external.
pub const PAGE: &str = include_str!("ui/status.html");

pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// The headers the page is served with, besides Content-Type, `Cache-Control: no-store` and
/// `X-Content-Type-Options: nosniff`, which every control answer has.
pub fn headers() -> [(&'static str, &'static str); 3] {
    [
        ("Content-Security-Policy", csp()),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    ]
}

/// The page's Content-Security-Policy, computed once per process.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| policy(PAGE))
}

/// A policy that allows `page`'s one inline `<style>` and one inline `<script>` (by hash),
/// `fetch` of the endpoint's own origin, the `data:` favicon, and nothing else: no other
/// script, style, frame, form target, base URL or framing by another page.
fn policy(page: &str) -> String {
    let hash = |tag: &str| match element(page, tag) {
        Some(body) => format!("'sha256-{}'", sha256::base64(&sha256::digest(body.as_bytes()))),
        None => "'none'".into(),
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("script"),
        hash("style")
    )
}

/// The text of `page`'s `<tag>...</tag>` (the exact bytes a browser hashes), when it has
/// exactly one such element and it has no attributes.
fn element<'a>(page: &'a str, tag: &str) -> Option<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let start = page.find(&open)? + open.len();
    let end = start + page[start..].find(&close)?;
    let once = page.matches(&format!("<{tag}")).count() == 1;
    once.then(|| &page[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outside_script() -> String {
        let script = element(PAGE, "script").expect("a script"); // ok: test
        PAGE.replacen(script, "", 1)
    }

    #[test]
    fn policy_names_the_assets_hashes() {
        let h = |s: &str| format!("'sha256-{}'", sha256::base64(&sha256::digest(s.as_bytes())));
        let p = policy("<style>b{}</style><script>x()</script>");
        assert_eq!(
            p,
            format!(
                "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
                 img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                h("x()"),
                h("b{}")
            )
        );
        // Known digest of "x()": printf 'x()' | openssl dgst -sha256 -binary | base64.
        assert!(p.contains("'sha256-D6IGS8VMvCoyaR/l0h9tERrBTATY01CoPS7l6xDv0kI='"), "{p}");
        // An element that is not there, or twice, or with attributes, is allowed nothing.
        assert!(policy("<p>").contains("script-src 'none'; style-src 'none'"));
        assert!(policy("<script>a</script><script>b</script>").contains("script-src 'none'"));
        assert!(policy("<script src=x></script>").contains("script-src 'none'"));
        assert_eq!(csp(), policy(PAGE));
        assert_eq!(headers()[0], ("Content-Security-Policy", csp()));
    }

    #[test]
    fn the_page_has_one_inline_style_and_one_inline_script() {
        let script = element(PAGE, "script").expect("one <script>"); // ok: test
        let style = element(PAGE, "style").expect("one <style>"); // ok: test
        assert!(script.len() > 1000 && style.len() > 500);
        assert!(!csp().contains("'none'; style-src") && !csp().contains("script-src 'none'"));
    }

    #[test]
    fn the_page_is_small_and_loads_nothing_from_elsewhere() {
        assert!(PAGE.len() < 20 * 1024, "{} bytes", PAGE.len());
        let html = outside_script();
        for bad in ["http:", "https:", "//", "src=", "@import", "url("] {
            assert!(!html.contains(bad), "the page's markup or style has {bad:?}");
        }
        // The only link is the inline favicon, which keeps the browser from asking for one.
        assert_eq!(html.matches("href=").count(), 1);
        assert!(html.contains("<link rel=\"icon\" href=\"data:,\">"));
    }

    #[test]
    fn the_markup_has_no_inline_handler_or_style_attribute() {
        // Both would be refused by the policy, so the page would break.
        let html = outside_script().to_ascii_lowercase();
        for (i, _) in html.match_indices(" on") {
            let name: String =
                html[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            assert!(!html[i + 1 + name.len()..].starts_with('='), "attribute {name}");
        }
        assert!(!html.contains(" style="));
        assert!(!html.contains("javascript:"));
    }

    #[test]
    fn the_script_writes_data_as_text_only() {
        let script = element(PAGE, "script").expect("a script"); // ok: test
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "Function(",
            "createContextualFragment",
            "setHTMLUnsafe",
            "srcdoc",
        ] {
            assert!(!script.contains(bad), "the script uses {bad}");
        }
        // Its requests: status (GET), pause and resume (POST), relative to the page.
        assert!(script.contains("fetch(\"status\""));
        assert!(script.contains("method: \"POST\""));
        assert_eq!(script.matches("fetch(").count(), 2);
    }
}
