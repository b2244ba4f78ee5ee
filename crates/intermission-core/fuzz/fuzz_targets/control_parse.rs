//! `control::parse(method, path, args)`, the control endpoint's request parser.
//!
//! Input: byte 0 picks the method (Get, Head, Post, Put, Other, modulo 5); the rest is
//! `path?args`, split at the first `?` (no `?`: empty args).
//!
//! Properties:
//! - never panics;
//! - Ok: the command is the last path segment's, the method is one it takes, the scope
//!   re-validates, durations are within 1 ms ..= 24 h, each argument only where its command
//!   takes it, the query is at most MAX_ARGS_LEN bytes;
//! - Ok: a canonical re-rendering of the request, and the same pairs in reverse order,
//!   parse to the same request;
//! - Err: 404 exactly for an unknown command, 405 (with Allow) exactly for a wrong method,
//!   else 400; the message is non-empty, short, survives json::error, and quotes untrusted
//!   input without control characters;
//! - percent-encoding data bytes of the query (unreserved ones, all of them, every other
//!   one), and adding empty pairs, give the very same Ok or Err, unless it pushes the
//!   query over MAX_ARGS_LEN.
#![no_main]

use intermission_core::control::{self, Command, ControlRequest, Method, MAX_ARGS_LEN};
use intermission_core::time::MAX_DURATION_MS;
use intermission_core::{json, scope_name};
use intermission_core_fuzz::{
    accepts, command_of, encode_query, first_control, hex, last_segment, strict_assert, Encode,
    METHODS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let method = METHODS[usize::from(m) % METHODS.len()];
    let (path, args) = match rest.iter().position(|&c| c == b'?') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let got = control::parse(method, path, args);
    let show = || {
        format!(
            "{method:?} path={:?} args={:?} (hex {})",
            String::from_utf8_lossy(path),
            String::from_utf8_lossy(args),
            hex(data)
        )
    };
    match &got {
        Ok(req) => check_ok(method, path, args, req, &show),
        Err(e) => {
            let expected = match command_of(last_segment(path), method) {
                None => 404,
                Some(c) if !accepts(c, method) => 405,
                Some(_) => 400,
            };
            assert_eq!(e.status, expected, "status of {}: {e:?}", show());
            assert_eq!(e.allow.is_some(), e.status == 405, "Allow of {}: {e:?}", show());
            if let Some(allow) = e.allow {
                assert_eq!(
                    Some(allow),
                    command_of(last_segment(path), method).map(Command::allow),
                    "{}",
                    show()
                );
            }
            assert!(
                !e.message.is_empty() && e.message.len() <= 512,
                "message of {}: {e:?}",
                show()
            );
            let doc: serde_json::Value = serde_json::from_str(&json::error(&e.message))
                .unwrap_or_else(|err| panic!("json::error of {}'s message: {err}", show()));
            assert_eq!(doc["error"].as_str(), Some(e.message.as_str()), "{}", show());
            let body = json::error(&e.message);
            strict_assert!(
                F1,
                first_control(body.trim_end_matches('\n')).is_none(),
                "F1: the 400 body for {} holds the raw control character {:?}: {body:?}",
                show(),
                first_control(body.trim_end_matches('\n'))
            );
            strict_assert!(
                F3,
                first_control(&e.message).is_none(),
                "F3: error message of {} holds the raw control character {:?}: {:?}",
                show(),
                first_control(&e.message),
                e.message
            );
        }
    }

    // The meaning of a query does not depend on how its data bytes are written.
    let mut variants: Vec<Vec<u8>> = [Encode::Unreserved, Encode::AllData, Encode::Alternate]
        .into_iter()
        .map(|how| encode_query(args, how))
        .collect();
    variants.push([b"&", args, b"&&"].concat());
    for v in variants {
        if args.len() <= MAX_ARGS_LEN && v.len() > MAX_ARGS_LEN {
            continue;
        }
        let again = control::parse(method, path, &v);
        assert_eq!(
            again,
            got,
            "{} parses differently written as args={:?}",
            show(),
            String::from_utf8_lossy(&v)
        );
    }
});

fn check_ok(
    method: Method,
    path: &[u8],
    args: &[u8],
    req: &ControlRequest,
    show: &dyn Fn() -> String,
) {
    assert!(args.len() <= MAX_ARGS_LEN, "{} accepted a query over MAX_ARGS_LEN", show());
    let cmd = command_of(last_segment(path), method);
    assert_eq!(Some(req.command), cmd, "command of {}", show());
    assert!(accepts(req.command, method), "{} accepted {method:?}", show());
    if let Some(s) = &req.scope {
        assert_eq!(
            scope_name::validate(s.as_bytes()),
            Ok(s.as_str()),
            "scope of {} does not re-validate",
            show()
        );
    }
    let pause = req.command == Command::Pause;
    for (what, v) in [("timeout", req.timeout_ms), ("auto_resume", req.auto_resume_ms)] {
        if let Some(ms) = v {
            assert!((1..=MAX_DURATION_MS).contains(&ms), "{what} {ms} of {}", show());
        }
    }
    assert!((1..=MAX_DURATION_MS).contains(&req.drain_timeout_ms()), "{}", show());
    assert!(!req.wait_drained || pause, "wait=drained on {:?}: {}", req.command, show());
    assert!(req.auto_resume_ms.is_none() || pause, "auto_resume on {:?}: {}", req.command, show());
    assert!(
        req.timeout_ms.is_none() || req.command == Command::Drain || (pause && req.wait_drained),
        "timeout on {:?} without wait=drained: {}",
        req.command,
        show()
    );
    assert_eq!(req.waits(), req.command == Command::Drain || req.wait_drained, "{}", show());
    if req.scope.is_none()
        && !req.wait_drained
        && req.timeout_ms.is_none()
        && req.auto_resume_ms.is_none()
    {
        // Nothing set: only empty pairs.
        assert!(args.split(|&c| c == b'&').all(|p| p.is_empty()), "{} ignored arguments", show());
    }

    // Canonical form, and the pairs in reverse order.
    let mut pairs: Vec<String> = Vec::new();
    if let Some(s) = &req.scope {
        pairs.push(format!("scope={s}"));
    }
    if req.wait_drained {
        pairs.push("wait=drained".into());
    }
    if let Some(ms) = req.timeout_ms {
        pairs.push(format!("timeout={ms}ms"));
    }
    if let Some(ms) = req.auto_resume_ms {
        pairs.push(format!("auto_resume={ms}ms"));
    }
    let canonical = pairs.join("&");
    let again =
        control::parse(method, format!("/{}", req.command.name()).as_bytes(), canonical.as_bytes());
    assert_eq!(again.as_ref(), Ok(req), "{} re-rendered as {canonical:?}", show());
    let mut reversed: Vec<&[u8]> = args.split(|&c| c == b'&').collect();
    reversed.reverse();
    let reversed = reversed.join(&b'&');
    let again = control::parse(method, path, &reversed);
    assert_eq!(again.as_ref(), Ok(req), "{} with its pairs reversed", show());
}
