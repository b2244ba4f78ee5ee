//! Helpers shared by the fuzz targets: the reference rules the targets check the crate
//! against, written independently of `intermission-core`'s code.

use intermission_core::control::{Command, Method};

/// Checks a property that the first runs found broken (README.md, findings F1 to F3, all
/// fixed): no control character from the input in a message, a JSON document or a label.
#[macro_export]
macro_rules! strict_assert {
    ($finding:ident, $($t:tt)*) => { assert!($($t)*); };
}

pub const METHODS: [Method; 5] =
    [Method::Get, Method::Head, Method::Post, Method::Put, Method::Other];

/// The last `/`-separated segment of a path.
pub fn last_segment(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// The command a segment names for a method, per the README: the empty segment (the
/// endpoint's root) is the status page for a GET or HEAD, and no command otherwise.
pub fn command_of(seg: &[u8], m: Method) -> Option<Command> {
    Some(match seg {
        b"status" => Command::Status,
        b"metrics" => Command::Metrics,
        b"drain" => Command::Drain,
        b"enable" | b"pause" => Command::Pause,
        b"disable" | b"resume" => Command::Resume,
        b"ui" => Command::Ui,
        b"" if matches!(m, Method::Get | Method::Head) => Command::Ui,
        _ => return None,
    })
}

/// Whether a command takes a method: reads with GET/HEAD, changes with POST/PUT.
pub fn accepts(c: Command, m: Method) -> bool {
    match c {
        Command::Status | Command::Metrics | Command::Drain | Command::Ui => {
            matches!(m, Method::Get | Method::Head)
        }
        Command::Pause | Command::Resume => matches!(m, Method::Post | Method::Put),
    }
}

/// Which data bytes of a query string [`encode_query`] percent-encodes.
#[derive(Clone, Copy, Debug)]
pub enum Encode {
    /// RFC 3986 unreserved characters (ALPHA / DIGIT / "-" / "." / "_" / "~"), upper-case hex.
    Unreserved,
    /// Every byte that is not query syntax (`&`, `=`, `+`, `%`), lower-case hex.
    AllData,
    /// Every other byte that is not query syntax, mixed-case hex.
    Alternate,
}

/// Percent-encodes data bytes of a raw query string without changing what it means: an
/// existing `%XX` (well-formed or not) is copied as is, and so are `&`, `=`, `+` and `%`.
pub fn encode_query(q: &[u8], how: Encode) -> Vec<u8> {
    const UP: &[u8; 16] = b"0123456789ABCDEF";
    const LO: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(q.len() * 3);
    let mut i = 0;
    let mut n = 0usize;
    while i < q.len() {
        let c = q[i];
        if c == b'%' {
            let end = (i + 3).min(q.len());
            out.extend_from_slice(&q[i..end]);
            i = end;
            continue;
        }
        let data = !matches!(c, b'&' | b'=' | b'+');
        let encode = data
            && match how {
                Encode::Unreserved => {
                    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
                }
                Encode::AllData => true,
                Encode::Alternate => {
                    n += 1;
                    n % 2 == 0
                }
            };
        if encode {
            let (hi, lo) = match how {
                Encode::Unreserved => (UP, UP),
                Encode::AllData => (LO, LO),
                Encode::Alternate => (UP, LO),
            };
            out.extend_from_slice(&[b'%', hi[usize::from(c >> 4)], lo[usize::from(c & 15)]]);
        } else {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// The first control character (Unicode Cc: C0, DEL, C1) of a string, if any.
pub fn first_control(s: &str) -> Option<char> {
    s.chars().find(|c| c.is_control())
}

/// Hex dump for assertion messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date, by counting (not Hinnant's
/// algorithm, which the crate uses the other way round).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    // Whole 400-year cycles have 146097 days; count the rest year by year.
    let cycles = (y - 1970).div_euclid(400);
    let mut days = cycles * 146_097;
    let mut yy = 1970 + cycles * 400;
    while yy < y {
        days += if leap(yy) { 366 } else { 365 };
        yy += 1;
    }
    for mm in 1..m {
        days += i64::from(days_in_month(y, mm));
    }
    days + i64::from(d) - 1
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    }
}

/// Checks an RFC 3339 rendering of unix ms: shape, field ranges, and that it denotes `ms`.
pub fn check_rfc3339(ms: u64, s: &str) {
    let b = s.as_bytes();
    let n = b.len();
    assert!(n >= 24 && b[n - 1] == b'Z', "rfc3339_ms({ms}) = {s:?}: shape");
    let (date, time) = s[..n - 1].split_at(n - 1 - 13);
    // time: "THH:MM:SS.mmm"
    let t = time.as_bytes();
    assert!(
        t[0] == b'T' && t[3] == b':' && t[6] == b':' && t[9] == b'.',
        "rfc3339_ms({ms}) = {s:?}: time shape"
    );
    let num = |x: &str| -> i64 {
        assert!(
            !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit()),
            "rfc3339_ms({ms}) = {s:?}: {x:?}"
        );
        x.parse().unwrap() // ok: a fuzz check panics on purpose
    };
    let (hh, mi, ss, fr) =
        (num(&time[1..3]), num(&time[4..6]), num(&time[7..9]), num(&time[10..13]));
    let mut parts = date.rsplitn(3, '-');
    let (d, m, y) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap()); // ok: a fuzz check panics on purpose
    assert!(d.len() == 2 && m.len() == 2 && y.len() >= 4, "rfc3339_ms({ms}) = {s:?}: date shape");
    let (y, m, d) = (num(y), num(m) as u32, num(d) as u32);
    assert!(
        (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m),
        "rfc3339_ms({ms}) = {s:?}: date"
    );
    assert!(hh < 24 && mi < 60 && ss < 60, "rfc3339_ms({ms}) = {s:?}: time");
    let back = ((days_from_civil(y, m, d) as i128 * 86_400 + i128::from(hh * 3600 + mi * 60 + ss))
        * 1000)
        + i128::from(fr);
    assert_eq!(back, i128::from(ms), "rfc3339_ms({ms}) = {s:?} denotes another instant");
}
