//! Scope names: what `intermission <scope>;` and `?scope=` accept.

use crate::text::printable;

/// The longest scope name, in bytes.
pub const MAX_LEN: usize = 64;

/// The scope `intermission on;` means.
pub const DEFAULT: &str = "default";

/// Checks a scope name: 1 to 64 ASCII letters, digits, `_` or `-`, and not `on` or `off` in
/// any case (those are the directive's flags, which nginx reads regardless of case).
pub fn validate(name: &[u8]) -> Result<&str, String> {
    if name.eq_ignore_ascii_case(b"on") || name.eq_ignore_ascii_case(b"off") {
        return Err(format!("scope name \"{}\" is reserved", printable(name)));
    }
    if name.is_empty() {
        return Err("scope name is empty".into());
    }
    if name.len() > MAX_LEN {
        return Err(format!("scope name is longer than {MAX_LEN} characters"));
    }
    if let Some(&bad) =
        name.iter().find(|&&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    {
        return Err(format!(
            "scope name \"{}\" has the character {}; use letters, digits, \"_\" and \"-\"",
            printable(name),
            describe_byte(bad)
        ));
    }
    // The bytes are ASCII, so this cannot fail; map the impossible error anyway.
    core::str::from_utf8(name).map_err(|_| "scope name is not ASCII".into())
}

/// What the argument of the `intermission` directive means.
#[derive(Debug, PartialEq, Eq)]
pub enum Setting<'a> {
    Off,
    Scope(&'a str),
}

/// Parses the argument of `intermission on | off | <scope>`.
pub fn parse_setting(arg: &[u8]) -> Result<Setting<'_>, String> {
    if arg.eq_ignore_ascii_case(b"off") {
        Ok(Setting::Off)
    } else if arg.eq_ignore_ascii_case(b"on") {
        Ok(Setting::Scope(DEFAULT))
    } else {
        validate(arg).map(Setting::Scope)
    }
}

fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("\"{}\"", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_digits_underscore_dash() {
        assert_eq!(validate(b"app-1_blue"), Ok("app-1_blue"));
        assert!(validate(&[b'a'; 64]).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_odd_characters() {
        assert!(validate(b"").is_err());
        assert!(validate(&[b'a'; 65]).is_err());
        for bad in [&b"a/b"[..], b"a b", b"a.b", b"\xff", b"caf\xc3\xa9", b"a\0"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(validate(b"x!").unwrap_err().contains("\"!\""));
    }

    #[test]
    fn on_means_default_and_off_is_off() {
        assert_eq!(parse_setting(b"on"), Ok(Setting::Scope("default")));
        assert_eq!(parse_setting(b"off"), Ok(Setting::Off));
        assert_eq!(parse_setting(b"blue"), Ok(Setting::Scope("blue")));
        assert!(parse_setting(b"b/c").is_err());
        for off in [&b"Off"[..], b"OFF", b"oFf"] {
            assert_eq!(parse_setting(off), Ok(Setting::Off));
        }
        for on in [&b"On"[..], b"ON", b"oN"] {
            assert_eq!(parse_setting(on), Ok(Setting::Scope("default")));
        }
        for reserved in [&b"on"[..], b"OFF", b"On"] {
            assert!(validate(reserved).unwrap_err().contains("reserved"));
        }
        assert_eq!(validate(b"online"), Ok("online"));
    }
}
