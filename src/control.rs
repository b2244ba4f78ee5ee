//! The `intermission_control` endpoint: status, pause (enable) and resume (disable).

use intermission_core::control::{self, Command, ControlError};
use intermission_core::json::{self, Change};
use ngx::ffi::{ngx_http_discard_request_body, ngx_http_request_t, ngx_int_t, NGX_LOG_NOTICE};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;

use crate::ngx_util::{method, now_unix_ms, process_alive, send_json};
use crate::{wake, worker, zone, Module};

pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let r = unsafe { &mut *r };
    // SAFETY: as above; a body, if any, is read and dropped before the answer.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != 0 {
        return rc;
    }
    match answer(r) {
        Ok(body) => send_json(r, 200, &body, None),
        Err(e) => send_json(r, e.status, &json::error(&e.message), e.allow),
    }
}

fn answer(r: &mut ngx_http_request_t) -> Result<String, ControlError> {
    let req = control::parse(method(r), r.uri.as_bytes(), r.args.as_bytes())?;
    let Some(mcf) = Module::main_conf(r) else {
        return Err(unavailable());
    };
    let (Some(shared), Some(w)) = (mcf.shared(), worker::get()) else {
        return Err(unavailable());
    };
    let targets: Vec<usize> = match &req.scope {
        Some(name) => match mcf.find(name) {
            Some(i) => vec![i],
            None => return Err(ControlError::not_found(format!("unknown scope \"{name}\""))),
        },
        None => (0..mcf.scope_count()).collect(),
    };
    let now = now_unix_ms();
    let held = |i: usize| shared.status(usize::from(mcf.shm_index[i]), process_alive).held;
    // SAFETY: a live request's connection, with its client address and log.
    let (client, log) = unsafe { ((*r.connection).addr_text, (*r.connection).log) };

    Ok(match req.command {
        Command::Status => {
            let st: Vec<_> = targets
                .iter()
                .map(|&i| shared.status(usize::from(mcf.shm_index[i]), process_alive))
                .collect();
            json::status(&st, now)
        }
        Command::Pause => {
            let mut changes = Vec::with_capacity(targets.len());
            for &i in &targets {
                let changed = zone::locked(mcf, || w.scope(i).pause(now));
                let n = held(i);
                if changed {
                    ngx_log_error!(
                        NGX_LOG_NOTICE,
                        log,
                        "intermission: scope \"{}\" paused by {} ({} held)",
                        mcf.scope_name(i),
                        client,
                        n
                    );
                }
                changes.push(Change {
                    name: mcf.scope_name(i).into(),
                    paused: true,
                    changed,
                    held: n,
                });
            }
            json::change("pause", &changes)
        }
        Command::Resume => {
            let mut changes = Vec::with_capacity(targets.len());
            for &i in &targets {
                let changed = zone::locked(mcf, || w.scope(i).resume());
                // Read once the resume took effect: what every worker now releases.
                let n = if changed { held(i) } else { 0 };
                let here = w.release_ready(i);
                if changed {
                    wake::notify();
                }
                if changed {
                    ngx_log_error!(NGX_LOG_NOTICE, log,
                        "intermission: scope \"{}\" resumed by {}, releasing {} held ({} in this worker)",
                        mcf.scope_name(i), client, n, here);
                }
                changes.push(Change {
                    name: mcf.scope_name(i).into(),
                    paused: false,
                    changed,
                    held: n,
                });
            }
            json::change("resume", &changes)
        }
    })
}

fn unavailable() -> ControlError {
    ControlError {
        status: 503,
        message: "the intermission state is not available in this worker".into(),
        allow: None,
    }
}
