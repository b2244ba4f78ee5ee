//! Quoting untrusted bytes in messages.

/// Shows untrusted bytes in a message: at most 64 of them, every byte outside printable
/// ASCII escaped (`\\x1b`), so that no control character from a request reaches a log, a
/// response or a terminal.
pub fn printable(b: &[u8]) -> String {
    let mut s: String =
        b.iter().take(64).flat_map(|&c| core::ascii::escape_default(c)).map(char::from).collect();
    if b.len() > 64 {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_everything_but_printable_ascii() {
        assert_eq!(printable(b"ab c"), "ab c");
        assert_eq!(printable(b"\x1b[31m\x7f\xc2\x9b\n"), "\\x1b[31m\\x7f\\xc2\\x9b\\n");
        assert_eq!(printable(&[b'z'; 70]).len(), 67);
    }
}
