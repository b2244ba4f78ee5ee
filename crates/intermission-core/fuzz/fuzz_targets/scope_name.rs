//! `scope_name::validate` and `scope_name::parse_setting` (the `intermission` directive).
//!
//! Properties:
//! - never panic;
//! - validate accepts exactly 1..=64 bytes of ASCII letters, digits, `_` and `-` but `on` and
//!   `off` in any case, returns the input unchanged, and what it returns re-validates;
//! - parse_setting: `off` in any case is Off, `on` in any case is the scope `default`,
//!   anything else is validate's verdict; a Scope re-validates;
//! - `?scope=` with the input percent-encoded is accepted exactly when validate accepts,
//!   naming the same scope;
//! - error messages are non-empty, short, and without control characters.
#![no_main]

use intermission_core::control::{self, Method};
use intermission_core::scope_name::{self, Setting, DEFAULT, MAX_LEN};
use intermission_core_fuzz::{encode_query, first_control, hex, strict_assert, Encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let show = || format!("{:?} (hex {})", String::from_utf8_lossy(data), hex(data));
    let valid = (1..=MAX_LEN).contains(&data.len())
        && data.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        && !data.eq_ignore_ascii_case(b"on")
        && !data.eq_ignore_ascii_case(b"off");
    let got = scope_name::validate(data);
    match &got {
        Ok(s) => {
            assert!(valid, "validate accepted {}", show());
            assert_eq!(s.as_bytes(), data, "validate changed {}", show());
            assert_eq!(scope_name::validate(s.as_bytes()), Ok(*s), "{}", show());
        }
        Err(e) => {
            assert!(!valid, "validate refused {}: {e}", show());
            assert!(!e.is_empty() && e.len() <= 400, "{}: {e:?}", show());
            strict_assert!(
                F3,
                first_control(e).is_none(),
                "F3: error for {} holds the raw control character {:?}: {e:?}",
                show(),
                first_control(e)
            );
        }
    }

    match scope_name::parse_setting(data) {
        Ok(Setting::Off) => assert!(data.eq_ignore_ascii_case(b"off"), "{}", show()),
        Ok(Setting::Scope(s)) => {
            if data.eq_ignore_ascii_case(b"on") {
                assert_eq!(s, DEFAULT);
            } else {
                assert_eq!(Ok(s), got, "{}", show());
            }
            assert_eq!(scope_name::validate(s.as_bytes()), Ok(s), "{}", show());
        }
        Err(e) => assert_eq!(Err(e), got, "{}", show()),
    }

    // `+`, `&`, `=` and `%` are query syntax: always encoded; the other bytes raw, then
    // all encoded, then every other one encoded.
    let mut base = b"scope=".to_vec();
    for &c in data {
        if matches!(c, b'+' | b'&' | b'=' | b'%') {
            base.extend_from_slice(format!("%{c:02X}").as_bytes());
        } else {
            base.push(c);
        }
    }
    for how in [None, Some(Encode::AllData), Some(Encode::Alternate)] {
        let q = match how {
            Some(h) => encode_query(&base, h),
            None => base.clone(),
        };
        if q.len() > control::MAX_ARGS_LEN {
            continue;
        }
        let r = control::parse(Method::Get, b"/status", &q);
        match (&got, &r) {
            (Ok(s), Ok(req)) => assert_eq!(req.scope.as_deref(), Some(*s), "{}", show()),
            (Err(_), Err(e)) => assert_eq!(e.status, 400, "{}", show()),
            _ => panic!(
                "validate({}) = {got:?} but ?{} gives {r:?}",
                show(),
                String::from_utf8_lossy(&q)
            ),
        }
    }
});
