//! The `intermission_control` endpoint: status, metrics, drain, pause (enable) and resume
//! (disable). Parsing and rendering are in `intermission-core`; this file applies commands
//! to the shared state and answers.

use intermission_core::control::{self, Command, ControlError, ControlRequest};
use intermission_core::json::{self, Change};
use intermission_core::metrics;
use ngx::ffi::{
    ngx_http_discard_request_body, ngx_http_request_t, ngx_int_t, ngx_log_t, ngx_str_t,
    NGX_LOG_NOTICE,
};
use ngx::ngx_log_error;

use crate::drain::{self, Answer};
use crate::ngx_util::{method, now_unix_ms, process_alive, send, send_json};
use crate::worker::{self, Worker};
use crate::{state_file, wake, zone};

pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let r = unsafe { &mut *r };
    // SAFETY: as above; a body, if any, is read and dropped before the answer.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != 0 {
        return rc;
    }
    let req = match control::parse(method(r), r.uri.as_bytes(), r.args.as_bytes()) {
        Ok(req) => req,
        Err(e) => return refuse(r, e),
    };
    let Some(w) = worker::get() else {
        return refuse(r, unavailable());
    };
    let targets = match targets(w, &req) {
        Ok(t) => t,
        Err(e) => return refuse(r, e),
    };
    let now = now_unix_ms();
    match req.command {
        Command::Status => {
            let st: Vec<_> =
                targets.iter().map(|&i| w.shared.status(w.shm(i), process_alive)).collect();
            send_json(r, 200, &json::status(&st, now), None)
        }
        Command::Metrics => {
            let st: Vec<_> =
                targets.iter().map(|&i| w.shared.status(w.shm(i), process_alive)).collect();
            send(r, 200, metrics::CONTENT_TYPE, &metrics::render(&st, now), None)
        }
        Command::Drain => drain::wait(r, w, mask(&targets), req.drain_timeout_ms(), Answer::Drain),
        Command::Pause => pause(r, w, &req, &targets, now),
        Command::Resume => resume(r, w, &targets),
    }
}

/// The configured scopes a request names: one, or all of them.
fn targets(w: &Worker, req: &ControlRequest) -> Result<Vec<usize>, ControlError> {
    match &req.scope {
        Some(name) => match w.mcf.find(name) {
            Some(i) => Ok(vec![i]),
            None => Err(ControlError::not_found(format!("unknown scope \"{name}\""))),
        },
        None => Ok((0..w.mcf.scope_count()).collect()),
    }
}

fn mask(targets: &[usize]) -> u64 {
    targets.iter().fold(0, |m, &i| m | 1 << i)
}

fn pause(
    r: &mut ngx_http_request_t,
    w: &mut Worker,
    req: &ControlRequest,
    targets: &[usize],
    now: u64,
) -> ngx_int_t {
    let auto_at = req.auto_resume_ms.map(|ms| now + ms);
    let (client, log) = client(r);
    let mut changes = Vec::with_capacity(targets.len());
    for &i in targets {
        let scope = w.scope(i);
        let changed = zone::locked(w.mcf, || scope.pause(now, auto_at));
        let held = w.shared.held_now(w.shm(i));
        if changed {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "intermission: scope \"{}\" paused by {} ({} held{})",
                w.mcf.scope_name(i),
                client,
                held,
                auto_note(req)
            );
        }
        changes.push(Change {
            name: w.mcf.scope_name(i).to_owned(),
            paused: true,
            changed,
            held,
            auto_resume_at_ms: scope.auto_resume_at(),
        });
    }
    zone::locked(w.mcf, || state_file::save(w.mcf, w.shared, log));
    // Every worker follows the new (or cleared) auto-resume deadline.
    w.schedule_auto_resume();
    wake::notify();
    if req.wait_drained {
        let changed = targets.iter().zip(&changes).filter(|(_, c)| c.changed).map(|(&i, _)| i);
        let answer = Answer::Pause { changed: mask(&changed.collect::<Vec<_>>()) };
        return drain::wait(r, w, mask(targets), req.drain_timeout_ms(), answer);
    }
    send_json(r, 200, &json::change("pause", &changes, now, None), None)
}

fn resume(r: &mut ngx_http_request_t, w: &mut Worker, targets: &[usize]) -> ngx_int_t {
    let (client, log) = client(r);
    let mut changes = Vec::with_capacity(targets.len());
    for &i in targets {
        let scope = w.scope(i);
        let changed = zone::locked(w.mcf, || scope.resume());
        // What the pause this resume ends held, over every worker: not what an earlier
        // resume released that a slow worker has not let go of yet.
        let ended = scope.epoch().wrapping_sub(1);
        let n = if changed { w.shared.held_in_epoch(w.shm(i), ended, process_alive) } else { 0 };
        let here = w.release_ready(i);
        if changed {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "intermission: scope \"{}\" resumed by {}, releasing {} held ({} in this worker)",
                w.mcf.scope_name(i),
                client,
                n,
                here
            );
        }
        changes.push(Change {
            name: w.mcf.scope_name(i).to_owned(),
            paused: false,
            changed,
            held: n,
            auto_resume_at_ms: None,
        });
    }
    zone::locked(w.mcf, || state_file::save(w.mcf, w.shared, log));
    w.schedule_auto_resume();
    wake::notify();
    send_json(r, 200, &json::change("resume", &changes, now_unix_ms(), None), None)
}

fn auto_note(req: &ControlRequest) -> String {
    req.auto_resume_ms.map_or(String::new(), |ms| format!(", auto-resume in {ms} ms"))
}

/// The client's address and the connection's log, for notice lines.
fn client(r: &ngx_http_request_t) -> (ngx_str_t, *mut ngx_log_t) {
    // SAFETY: a live request's connection, with its client address and log.
    unsafe { ((*r.connection).addr_text, (*r.connection).log) }
}

fn refuse(r: &mut ngx_http_request_t, e: ControlError) -> ngx_int_t {
    send_json(r, e.status, &json::error(&e.message), e.allow)
}

fn unavailable() -> ControlError {
    ControlError {
        status: 503,
        message: "the intermission state is not available in this worker".into(),
        allow: None,
    }
}
