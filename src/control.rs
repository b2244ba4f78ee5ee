//! The `intermission_control` endpoint: status, metrics, drain, pause (enable) and resume
//! (disable). Parsing and rendering are in `intermission-core`; this file applies commands
//! to the shared state and answers.
//!
//! Commands work on the scopes of the shared table, not only on this configuration's: a
//! scope that a reload removed while it was paused, or while it still holds requests in the
//! old workers, can still be seen and resumed. A pause or resume and the state file's write
//! are one critical section; an answer whose change could not be written says so (500,
//! `"persisted":false`).

use intermission_core::control::{self, Command, ControlError, ControlRequest};
use intermission_core::json::{self, Change};
use intermission_core::{cross_site, metrics, ui};
use ngx::ffi::{
    ngx_http_discard_request_body, ngx_http_request_t, ngx_int_t, ngx_log_t, ngx_str_t, NGX_LOG_ERR,
};
use ngx::ngx_log_error;

use crate::ngx_util::{method, now_unix_ms, process_alive, send, send_json, LOG_STATE};
use crate::runtime::drain::{self, Answer, Mask};
use crate::runtime::{self as worker, Worker};
use crate::{persist, shm};

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
    if req.command.changes_state() {
        if let Err(e) = cross_site::check(&browser_headers(r)) {
            let (client, log) = client(r);
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "intermission: {} from {} refused, nothing changed: {}",
                req.command.name(),
                client,
                e.message
            );
            return refuse(r, e);
        }
    }
    let Some(w) = worker::get() else {
        return refuse(r, unavailable());
    };
    // What a dead process left behind must not show in any answer.
    shm::locked(w.mcf, || w.shared.reap(process_alive));
    let targets = match targets(w, &req) {
        Ok(t) => t,
        Err(e) => return refuse(r, e),
    };
    let now = now_unix_ms();
    match req.command {
        Command::Status => {
            let mut st: Vec<_> =
                targets.iter().map(|&i| w.shared.status(i, process_alive)).collect();
            for (s, b) in st.iter_mut().zip(w.blockers(&targets)) {
                s.blockers = b;
            }
            send_json(r, 200, &json::status(&st, now), None)
        }
        Command::Metrics => {
            let st: Vec<_> = targets.iter().map(|&i| w.shared.status(i, process_alive)).collect();
            send(r, 200, metrics::CONTENT_TYPE, &metrics::render(&st, now), &[])
        }
        Command::Drain => drain::wait(r, w, mask(&targets), req.drain_timeout_ms(), Answer::Drain),
        Command::Pause => pause(r, w, &req, &targets, now),
        Command::Resume => resume(r, w, &targets),
        // The page reads status itself, from the browser.
        Command::Ui => send(r, 200, ui::CONTENT_TYPE, ui::PAGE, &ui::headers()),
    }
}

/// The scopes of the shared table a request names: one, or all of them. "All" is every scope
/// this configuration names and, but for a pause, every other scope still in use (paused,
/// holding or in flight).
fn targets(w: &Worker, req: &ControlRequest) -> Result<Vec<usize>, ControlError> {
    let configured = |i: usize| w.mcf.local(i).is_some();
    let in_use = |i: usize| w.shared.in_use(i, process_alive);
    match &req.scope {
        Some(name) => match w.shared.find(name).filter(|&i| configured(i) || in_use(i)) {
            Some(i) => Ok(vec![i]),
            None => Err(ControlError::not_found(format!("unknown scope \"{name}\""))),
        },
        None => {
            let mut all: Vec<usize> = (0..w.mcf.scope_count()).map(|i| w.shm(i)).collect();
            if req.command != Command::Pause {
                all.extend(w.shared.named().filter(|&i| !configured(i) && in_use(i)));
            }
            Ok(all)
        }
    }
}

fn mask(targets: &[usize]) -> Mask {
    targets.iter().fold(0, |m, &i| m | 1 << i)
}

/// The outcome of writing the state file, for the answer: `None` without a state file.
fn persisted(w: &Worker, saved: Result<(), String>) -> Option<Result<(), String>> {
    (!w.mcf.state_file.is_empty()).then_some(saved)
}

/// A pause or resume answers 500 when its change is in effect but was not persisted.
fn change_status(persist: &Option<Result<(), String>>) -> u16 {
    if persist.as_ref().is_some_and(Result::is_err) {
        500
    } else {
        200
    }
}

fn pause(
    r: &mut ngx_http_request_t,
    w: &Worker,
    req: &ControlRequest,
    targets: &[usize],
    now: u64,
) -> ngx_int_t {
    let auto_at = req.auto_resume_ms.map(|ms| now + ms);
    let (client, log) = client(r);
    let (changed, f, saved) = shm::locked(w.mcf, || {
        persist::change(w.mcf, w.shared, || {
            (targets.iter().map(|&i| w.shared.scope(i).pause(now, auto_at)).collect(), true)
        })
    });
    crate::runtime::followed(w, log, f);
    let saved = saved.unwrap_or(Ok(()));
    let changed: Vec<bool> = changed;
    let mut changes = Vec::with_capacity(targets.len());
    for (&i, &changed) in targets.iter().zip(&changed) {
        let scope = w.shared.scope(i);
        let held = w.shared.held_now(i);
        if changed {
            ngx_log_error!(
                LOG_STATE,
                log,
                "intermission: scope \"{}\" paused by {} ({} held{})",
                scope.name(),
                client,
                held,
                auto_note(req)
            );
        }
        changes.push(Change {
            name: scope.name(),
            paused: true,
            changed,
            held,
            auto_resume_at_ms: scope.auto_resume_at(),
            down: scope.is_down(),
        });
    }
    log_unsaved(log, "pause", &saved);
    // Every worker follows the new (or cleared) auto-resume deadline, and closes what
    // `intermission_close_on_pause` says to.
    w.schedule_auto_resume();
    crate::runtime::wake::notify();
    w.close_on_pause();
    let persist = persisted(w, saved);
    if req.wait_drained {
        let changed = targets.iter().zip(&changed).filter(|(_, &c)| c).map(|(&i, _)| i);
        let answer = Answer::Pause {
            changed: drain::words(mask(&changed.collect::<Vec<_>>())),
            persisted: persist.as_ref().map(Result::is_ok),
            error: persist.and_then(Result::err),
        };
        return drain::wait(r, w, mask(targets), req.drain_timeout_ms(), answer);
    }
    let doc = json::change("pause", &changes, now, None, persist.as_ref());
    send_json(r, change_status(&persist), &doc, None)
}

fn resume(r: &mut ngx_http_request_t, w: &Worker, targets: &[usize]) -> ngx_int_t {
    let (client, log) = client(r);
    // What the pause each resume ends holds, over every worker, counted before the epoch
    // moves on: no worker releases any of them before, so none is missed (and none that an
    // earlier resume released and a slow worker has not let go of yet is counted).
    let (resumed, f, saved) = shm::locked(w.mcf, || {
        persist::change(w.mcf, w.shared, || {
            // A scope that is down releases none: its held requests (all of them) wait
            // for a readiness check to find the backend.
            let resumed: Vec<(bool, u64, bool)> = targets
                .iter()
                .map(|&i| {
                    let scope = w.shared.scope(i);
                    let n = w.shared.held_in_epoch(i, scope.epoch(), process_alive);
                    let changed = scope.resume();
                    match scope.is_down() {
                        true => (changed, w.shared.held_now(i), true),
                        false => (changed, if changed { n } else { 0 }, false),
                    }
                })
                .collect();
            (resumed, true)
        })
    });
    crate::runtime::followed(w, log, f);
    let saved = saved.unwrap_or(Ok(()));
    let mut changes = Vec::with_capacity(targets.len());
    for (&i, &(changed, n, down)) in targets.iter().zip(&resumed) {
        let scope = w.shared.scope(i);
        let here = w.resumed(i);
        if changed && down {
            ngx_log_error!(
                LOG_STATE,
                log,
                "intermission: scope \"{}\" resumed by {} while it is down: its {} held \
                 request(s) wait for a readiness check to find the backend",
                scope.name(),
                client,
                n
            );
        } else if changed {
            ngx_log_error!(
                LOG_STATE,
                log,
                "intermission: scope \"{}\" resumed by {}, releasing {} held ({} in this worker)",
                scope.name(),
                client,
                n,
                here
            );
        }
        changes.push(Change {
            name: scope.name(),
            paused: false,
            changed,
            held: n,
            auto_resume_at_ms: None,
            down,
        });
    }
    log_unsaved(log, "resume", &saved);
    w.schedule_auto_resume();
    let persist = persisted(w, saved);
    let doc = json::change("resume", &changes, now_unix_ms(), None, persist.as_ref());
    send_json(r, change_status(&persist), &doc, None)
}

fn log_unsaved(log: *mut ngx_log_t, action: &str, saved: &Result<(), String>) {
    if let Err(e) = saved {
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "intermission: the {} is in effect, but not persisted: {}",
            action,
            e
        );
    }
}

fn auto_note(req: &ControlRequest) -> String {
    req.auto_resume_ms.map_or(String::new(), |ms| format!(", auto-resume in {ms} ms"))
}

/// The headers that tell a browser's request made for another site: the first of each.
fn browser_headers(r: &ngx_http_request_t) -> cross_site::Headers<'_> {
    let mut h = cross_site::Headers::default();
    // SAFETY: the request's own list of headers, which lives as long as the request.
    for (key, value) in unsafe { ngx::http::list_iterator(&r.headers_in.headers) } {
        let key = key.as_bytes();
        let slot = if key.eq_ignore_ascii_case(b"sec-fetch-site") {
            &mut h.sec_fetch_site
        } else if key.eq_ignore_ascii_case(b"origin") {
            &mut h.origin
        } else if key.eq_ignore_ascii_case(b"host") {
            &mut h.host
        } else {
            continue;
        };
        slot.get_or_insert(value.as_bytes());
    }
    h
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
