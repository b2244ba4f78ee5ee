//! Times: wall-clock rendering without a date library, and parsing of durations and rates.

use crate::text::printable;

/// Formats Unix milliseconds as RFC 3339 UTC, e.g. `2026-11-21T11:30:00.123Z`.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339_ms(1_795_260_600_123), "2026-11-21T11:30:00.123Z");
    }
}

/// The longest time a control argument or a directive takes.
pub const MAX_DURATION_MS: u64 = 24 * 3600 * 1000;

/// Parses a time as nginx writes them: `500ms`, `30s`, `2m`, `1h`, `1m30s`, or a bare number
/// of seconds. Zero, negative, malformed or over 24 hours is an error.
pub fn parse_duration_ms(s: &[u8]) -> Result<u64, String> {
    let shown = printable(&s[..s.len().min(32)]);
    let bad = || format!("invalid time \"{shown}\": use e.g. 500ms, 30s, 2m, 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    if s.iter().all(u8::is_ascii_digit) {
        return seconds_only(s).ok_or_else(bad).and_then(|ms| check_range(ms, &shown));
    }
    let mut total: u64 = 0;
    let mut last_scale = u64::MAX;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 12 {
            return Err(bad());
        }
        let n: u64 = core::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(bad)?;
        rest = &rest[digits..];
        let unit_len = rest.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        let scale = match &rest[..unit_len] {
            b"ms" => 1,
            b"s" => 1000,
            b"m" => 60_000,
            b"h" => 3_600_000,
            b"d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        // Each unit once, larger units first, as nginx's own time parser wants.
        if scale >= last_scale {
            return Err(bad());
        }
        last_scale = scale;
        total = n.checked_mul(scale).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        if total > MAX_DURATION_MS {
            break;
        }
    }
    check_range(total, &shown)
}

fn seconds_only(s: &[u8]) -> Option<u64> {
    if s.len() > 12 {
        return Some(u64::MAX);
    }
    core::str::from_utf8(s).ok()?.parse::<u64>().ok()?.checked_mul(1000).or(Some(u64::MAX))
}

fn check_range(ms: u64, shown: &str) -> Result<u64, String> {
    match ms {
        0 => Err(format!("invalid time \"{shown}\": it must be more than zero")),
        ms if ms > MAX_DURATION_MS => {
            Err(format!("invalid time \"{shown}\": it must be at most 24h"))
        }
        ms => Ok(ms),
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn accepts_nginx_times() {
        for (s, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1h30m", 5_400_000),
            ("45", 45_000),
            ("1d", 86_400_000),
            ("24h", MAX_DURATION_MS),
        ] {
            assert_eq!(parse_duration_ms(s.as_bytes()), Ok(ms), "{s}");
        }
    }

    #[test]
    fn refuses_zero_negative_malformed_and_huge() {
        for s in [
            "",
            "0",
            "0s",
            "-1s",
            "-1",
            "abc",
            "1x",
            "s",
            "1.5s",
            "1 s",
            "25h",
            "99999999999s",
            "99999999999999999999",
            "1h1",
            "ms",
            "1sms",
            "\u{0661}s",
        ] {
            assert!(parse_duration_ms(s.as_bytes()).is_err(), "{s}");
        }
    }
}

/// A release rate's unit: requests per 60,000 seconds, in which both `r/s` and `r/m` are
/// whole numbers.
pub const RATE_PERIOD_S: u64 = 60_000;

/// Parses a release rate as `limit_req` writes them, `100r/s` or `600r/m`, into requests per
/// [`RATE_PERIOD_S`]. At least 1r/m, at most 1,000,000r/s.
pub fn parse_rate(s: &[u8]) -> Result<u64, String> {
    let shown = printable(&s[..s.len().min(32)]);
    let bad = || format!("invalid rate \"{shown}\": use e.g. 100r/s or 600r/m");
    let (n, scale) = if let Some(n) = s.strip_suffix(b"r/s") {
        (n, RATE_PERIOD_S)
    } else if let Some(n) = s.strip_suffix(b"r/m") {
        (n, RATE_PERIOD_S / 60)
    } else {
        return Err(bad());
    };
    if n.is_empty() || n.len() > 9 || !n.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n: u64 = core::str::from_utf8(n).ok().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    match (n, n * scale) {
        (0, _) => Err(format!("invalid rate \"{shown}\": it must be more than zero")),
        (_, r) if r > 1_000_000 * RATE_PERIOD_S => {
            Err(format!("invalid rate \"{shown}\": at most 1000000r/s"))
        }
        (_, r) => Ok(r),
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate(b"100r/s"), Ok(6_000_000));
        assert_eq!(parse_rate(b"1r/s"), Ok(60_000));
        assert_eq!(parse_rate(b"60r/m"), Ok(60_000));
        assert_eq!(parse_rate(b"1r/m"), Ok(1000));
        assert_eq!(parse_rate(b"1000000r/s"), Ok(60_000_000_000));
        for bad in ["0r/s", "r/s", "10", "10r/h", "-1r/s", "1.5r/s", "1000001r/s", "9999999999r/s"]
        {
            assert!(parse_rate(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
