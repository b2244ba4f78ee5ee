//! `time::parse_duration_ms`, which reads `intermission_max_time` and the control
//! endpoint's `timeout=` and `auto_resume=`.
//!
//! Properties:
//! - never panics;
//! - agrees (Ok value or Err) with a reference parser that sums in u128: a bare number of
//!   at most 12 digits is seconds; otherwise one or more `<1..12 digits><ms|s|m|h|d>`, each
//!   unit once and larger units first (as nginx's own parser); zero and over 24 h are refused;
//! - an accepted duration is within 1 ms ..= 24 h and reads back the same written as
//!   `<n>ms` (and as `<n>` seconds when whole);
//! - an error message is short and quotes the input without control characters.
#![no_main]

use intermission_core::time::{parse_duration_ms, MAX_DURATION_MS};
use intermission_core_fuzz::{first_control, hex, strict_assert};
use libfuzzer_sys::fuzz_target;

fn reference(s: &[u8]) -> Option<u64> {
    let value = |d: &[u8]| d.iter().fold(0u128, |n, &c| n * 10 + u128::from(c - b'0'));
    if s.is_empty() {
        return None;
    }
    let total = if s.iter().all(u8::is_ascii_digit) {
        if s.len() > 12 {
            return None;
        }
        value(s) * 1000
    } else {
        let (mut total, mut i, mut last) = (0u128, 0, u128::MAX);
        while i < s.len() {
            let d = s[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if !(1..=12).contains(&d) {
                return None;
            }
            let n = value(&s[i..i + d]);
            i += d;
            let u = s[i..].iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let scale: u128 = match &s[i..i + u] {
                b"ms" => 1,
                b"s" => 1_000,
                b"m" => 60_000,
                b"h" => 3_600_000,
                b"d" => 86_400_000,
                _ => return None,
            };
            i += u;
            if scale >= last {
                return None;
            }
            last = scale;
            total += n * scale;
        }
        total
    };
    (1..=u128::from(MAX_DURATION_MS)).contains(&total).then_some(total as u64)
}

fuzz_target!(|data: &[u8]| {
    let got = parse_duration_ms(data);
    let show = || format!("{:?} (hex {})", String::from_utf8_lossy(data), hex(data));
    assert_eq!(
        got.as_ref().ok().copied(),
        reference(data),
        "parse_duration_ms({}) = {got:?}",
        show()
    );
    match got {
        Ok(ms) => {
            assert!((1..=MAX_DURATION_MS).contains(&ms), "{} = {ms}", show());
            assert_eq!(parse_duration_ms(format!("{ms}ms").as_bytes()), Ok(ms), "{}", show());
            if ms % 1000 == 0 {
                assert_eq!(
                    parse_duration_ms(format!("{}", ms / 1000).as_bytes()),
                    Ok(ms),
                    "{}",
                    show()
                );
            }
        }
        Err(e) => {
            assert!(e.starts_with("invalid time \"") && e.len() <= 200, "{}: {e:?}", show());
            strict_assert!(
                F3,
                first_control(&e).is_none(),
                "F3: error for {} holds the raw control character {:?}: {e:?}",
                show(),
                first_control(&e)
            );
        }
    }
});
