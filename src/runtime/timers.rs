//! The worker's own events: the tick (and the eventfd's read event) that looks at the shared
//! state, following the state file, a release's next batch, the drain check, auto-resume.

use ngx::ffi::{ngx_add_timer, ngx_event_t, ngx_log_t, ngx_msec_t, NGX_LOG_ERR};
use ngx::ngx_log_error;

use super::release::release_some;
use super::{drain, get, wake, Worker};
use crate::ngx_util::{now_unix_ms, process_alive, LOG_STATE};
use crate::{persist, shm};

/// How often a worker looks at the shared state while it holds or waits, when the eventfd
/// wakes it for every resume...
pub const TICK_MS: ngx_msec_t = 100;
/// ...and when it cannot (another event method than epoll).
pub const TICK_MS_UNWOKEN: ngx_msec_t = 5;

/// The tick, and the eventfd's read event: release what a resume has freed, answer the
/// drain waiters whose scopes have drained, follow auto-resume deadlines set elsewhere.
pub(super) unsafe extern "C" fn on_tick(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    // SAFETY: nginx passes our own event (the tick or the eventfd's), whose log is set.
    let log = unsafe { (*ev).log };
    shm::locked(w.mcf, || w.shared.reap(process_alive));
    follow_state_file(w, log);
    w.close_on_pause();
    super::shutdown::check(w, log);
    w.check_failures();
    release_some(w);
    drain::check_all(w);
    w.schedule_auto_resume();
    w.arm();
}

/// Applies a pause or resume that another nginx generation (binary upgrade) wrote to the
/// state file: a resume there releases what this generation holds.
pub(super) fn follow_state_file(w: &Worker, log: *mut ngx_log_t) {
    if w.mcf.state_file.is_empty() {
        return;
    }
    let f = shm::locked(w.mcf, || persist::follow(w.mcf, w.shared));
    followed(w, log, f);
    w.schedule_auto_resume();
}

/// Does what following the state file changed: releases what a resume there freed, and has
/// every worker see a pause or a new deadline; logs each.
pub fn followed(w: &Worker, log: *mut ngx_log_t, f: persist::Followed) {
    if f.is_empty() {
        return;
    }
    if let Some(p) = f.problem {
        ngx_log_error!(NGX_LOG_ERR, log, "intermission: {}", p);
    }
    for i in f.resumed {
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\" resumed by the state file (another nginx generation)",
            w.shared.scope(i).name()
        );
        w.resumed(i);
    }
    for i in f.deadlines {
        let at = w.shared.scope(i).auto_resume_at();
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\": auto-resume {} by the state file (another nginx \
             generation)",
            w.shared.scope(i).name(),
            at.map_or("cleared".to_owned(), |at| format!(
                "in {} ms",
                at.saturating_sub(now_unix_ms())
            ))
        );
        wake::notify();
    }
    for i in f.paused {
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\" paused by the state file (another nginx generation)",
            w.shared.scope(i).name()
        );
        wake::notify();
    }
    w.schedule_auto_resume();
}

/// With a state file: follows it, and looks again in `TICK_MS`.
pub(super) unsafe extern "C" fn on_follow(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    // SAFETY: nginx passes our own event, whose log is set.
    follow_state_file(w, unsafe { (*ev).log });
    w.close_on_pause();
    // SAFETY: the event lives in the leaked state.
    unsafe { ngx_add_timer(w.follow.get(), TICK_MS) };
}

/// One batch of a release, shared between the ready scopes in order.
pub(super) unsafe extern "C" fn on_more(_ev: *mut ngx_event_t) {
    if let Some(w) = get() {
        release_some(w);
    }
}

pub(super) unsafe extern "C" fn on_check(_ev: *mut ngx_event_t) {
    if let Some(w) = get() {
        drain::check_all(w);
    }
}

/// A scope's auto-resume deadline passed: the first worker to get here resumes it.
pub(super) unsafe extern "C" fn on_auto(ev: *mut ngx_event_t) {
    let Some(w) = get() else { return };
    // SAFETY: nginx passes our own event, whose log is the cycle's.
    let log = unsafe { (*ev).log };
    let now = now_unix_ms();
    let named: Vec<usize> = w.shared.named().collect();
    for i in named {
        let scope = w.shared.scope(i);
        let (resumed, f, saved) = shm::locked(w.mcf, || {
            persist::change(w.mcf, w.shared, || {
                let resumed = scope.resume_if_due(now);
                (resumed, resumed)
            })
        });
        followed(w, log, f);
        if !resumed {
            continue;
        }
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\" auto-resumed, releasing {} held",
            scope.name(),
            w.shared.held_now(i)
        );
        if let Some(Err(e)) = saved {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "intermission: auto-resume of \"{}\": {}",
                scope.name(),
                e
            );
        }
        w.resumed(i);
    }
    w.schedule_auto_resume();
}
