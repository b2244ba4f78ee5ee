//! The access-phase handler: passes a request on, holds it while its scope is paused, or
//! answers 503 when the scope holds as many as it may; and what happens to a held request
//! when it is released or held too long.
//!
//! Like `limit_req`'s delay: the handler returns `NGX_AGAIN`, the request waits with
//! `ngx_http_test_reading` as its read handler (a client that leaves is noticed and the
//! request finalized, which runs the pool cleanup that unlinks it), and a release posts its
//! write event; `resume` then runs the phases again, where this handler passes it on. The
//! handler never returns `NGX_OK`: under `satisfy any` that would grant access.

use core::ptr::addr_of_mut;

use ngx::core::Status;
use ngx::ffi::{
    ngx_add_timer, ngx_event_t, ngx_handle_read_event, ngx_http_block_reading,
    ngx_http_core_run_phases, ngx_http_finalize_request, ngx_http_request_t,
    ngx_http_test_predicates, ngx_http_test_reading, ngx_int_t, ngx_post_event, ngx_posted_events,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_MAX_URI_CHANGES, NGX_HTTP_SERVICE_UNAVAILABLE,
    NGX_LOG_ALERT,
};
use ngx::http::Request;
use ngx::{ngx_log_debug, ngx_log_error};

use crate::conf::{self, OnTimeout};
use crate::failure;
use crate::ngx_util::now_unix_ms;
use crate::runtime::checks;
use crate::runtime::request::{self, Outcome, ReqState};
use crate::runtime::{self as worker, Worker};
use crate::shm;

const DECLINED: ngx_int_t = Status::NGX_DECLINED.0;
const AGAIN: ngx_int_t = Status::NGX_AGAIN.0;
const SERVER_ERROR: ngx_int_t = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
const UNAVAILABLE: ngx_int_t = NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t;

/// What a 503 from the module tells the client: try again in a few seconds.
const RETRY_AFTER: &str = "5";

pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls phase handlers with a live request.
    let r = unsafe { &mut *r };
    // Subrequests go with their main request; nginx skips access for them anyway.
    if !core::ptr::eq(r.main, r) {
        return DECLINED;
    }
    let Some(lcf) = conf::loc_conf(r) else { return DECLINED };
    let Some(scope) = lcf.scope() else { return DECLINED };
    if lcf.control {
        return DECLINED;
    }
    let Some(w) = worker::get() else { return DECLINED };
    let found = request::find(r);
    if lcf.twin_status != 0 {
        return from_error_page(r, found.as_ref(), w, lcf, scope);
    }
    if let Some(f) = &found {
        // Re-entered: a held request waits; once released (or passed before an internal
        // redirect within its scope) it goes on to the other access handlers.
        if f.outcome() == Outcome::Held {
            return AGAIN;
        }
        if f.scope() == scope {
            return DECLINED;
        }
        // An internal redirect into a location of another scope: the request belongs to the
        // scope of the location it is in now, and is decided again there.
        f.leave(w);
    }
    let found = found.as_ref();
    let epoch = match w.scope(scope).hold_epoch() {
        Some(epoch) => epoch,
        // A windowed release is under way: a new request waits behind the held ones,
        // ready at once, so that it neither passes them nor adds to what the window lets
        // reach the backend.
        // (Not while requests are held because of a failure: a new one tries the backend,
        // which may well be there for it.)
        None if lcf.release_window > 0
            && !w.scope(scope).is_failing()
            && w.shared.has_held(w.shm(scope)) =>
        {
            w.scope(scope).epoch().saturating_sub(1)
        }
        None => return pass(r, found, w, lcf, scope, Outcome::Pass),
    };
    if !lcf.bypass.is_null() {
        // SAFETY: `bypass` is the predicate array `ngx_http_set_predicate_slot` made.
        match unsafe { ngx_http_test_predicates(r, lcf.bypass) } {
            rc if rc == Status::NGX_DECLINED.0 => {
                return pass(r, found, w, lcf, scope, Outcome::Bypass)
            }
            rc if rc == Status::NGX_ERROR.0 => return SERVER_ERROR,
            _ => {}
        }
    }
    // Two caps: this worker's connections (a worker that accepted more than its share must
    // not run out of them: its clients would get errors, its releases 500s), and
    // `intermission_max_held` over the instance (by default, every worker's budget).
    let budget = w.hold_budget(lcf.release_window);
    let max_held = if lcf.max_held > 0 { lcf.max_held } else { budget * w.workers };
    let capped = if w.held_here() >= budget {
        Some((true, budget))
    } else if w.held_for_limit(scope, max_held) >= max_held {
        Some((false, max_held))
    } else {
        None
    };
    if let Some((worker, cap)) = capped {
        if request::record(r, found, scope, Outcome::Rejected).is_none() {
            return SERVER_ERROR;
        }
        w.scope(scope).count_rejected();
        // SAFETY: a live request has a connection with a log.
        w.say_capped(unsafe { (*r.connection).log }, scope, worker, cap);
        return reject(r);
    }
    let sc = w.scope(scope);
    if lcf.on_failure == 1 && sc.is_down() {
        // Held because the backend is down: it waits for the backend like a failed request.
        return hold_failed(r, found, w, lcf, scope, sc.failed_status());
    }
    hold(r, found, w, scope, epoch, lcf.max_time_ms)
}

/// In a location's named twin (`intermission_on_failure hold`, see `failure`), which the
/// error page for `lcf.twin_status` led to: a failure the location holds is held; a request
/// released from there goes on; anything else gets the answer nginx would have given (and no
/// other error page: nginx applies one per request).
fn from_error_page(
    r: &mut ngx_http_request_t,
    found: Option<&request::Found>,
    w: &Worker,
    lcf: &conf::LocConf,
    scope: usize,
) -> ngx_int_t {
    if let Some(f) = found.filter(|f| f.scope() == scope && f.outcome() != Outcome::Bypass) {
        match f.outcome() {
            Outcome::Held => return AGAIN,
            // Answered by this module: it stays answered.
            Outcome::GaveUp | Outcome::Rejected => {}
            _ => {
                let seen = f.held().map_or(0, |st| st.attempts);
                if let Some(status) = failure::failed_status(r, seen, lcf) {
                    return hold_failed(r, Some(f), w, lcf, scope, status);
                }
                if f.held().is_some() && failure::attempts(r) <= seen {
                    // Released from a hold here: no attempt since.
                    return DECLINED;
                }
            }
        }
    }
    r.set_error_page(1);
    lcf.twin_status as ngx_int_t
}

/// Passes the request on; it is in flight until it finishes.
fn pass(
    r: &mut ngx_http_request_t,
    found: Option<&request::Found>,
    w: &Worker,
    lcf: &conf::LocConf,
    scope: usize,
    outcome: Outcome,
) -> ngx_int_t {
    let Some(flight) = request::record(r, found, scope, outcome) else {
        return SERVER_ERROR;
    };
    if let Some(f) = flight {
        w.flight_start(f, Some(lcf));
    }
    DECLINED
}

fn hold(
    r: &mut ngx_http_request_t,
    found: Option<&request::Found>,
    w: &Worker,
    scope: usize,
    epoch: u64,
    max_time_ms: ngx::ffi::ngx_msec_t,
) -> ngx_int_t {
    let Some(st) = request::held(r, found, scope) else {
        // SAFETY: a live request has a connection with a log.
        ngx_log_error!(
            NGX_LOG_ALERT,
            unsafe { (*r.connection).log },
            "intermission: no memory to hold"
        );
        return SERVER_ERROR;
    };
    st.arrival = w.shared.next_arrival();
    st.epoch = epoch;
    st.since_ms = now_unix_ms();
    w.hold(st);
    wait(r, st, max_time_ms)
}

/// A request came back from a failed upstream attempt (`intermission_on_failure hold`):
/// held until the backend answers a readiness check, with what is left of its deadline
/// (`intermission_max_time` from its arrival). A body nginx did not keep, a deadline
/// already passed, or a real stop of nginx gets nginx's answer.
fn hold_failed(
    r: &mut ngx_http_request_t,
    f: Option<&request::Found>,
    w: &Worker,
    lcf: &conf::LocConf,
    scope: usize,
    status: u32,
) -> ngx_int_t {
    let sc = w.scope(scope);
    let now = now_unix_ms();
    let elapsed = now.saturating_sub(failure::arrived_ms(r));
    let before = f.and_then(|f| f.held()).map(|st| (st.arrival, st.check, st.failed));
    if before.is_some_and(|b| b.1) {
        if failure::nothing_sent(r) {
            let why = format!(
                "the readiness check got no connection to the backend ({status}); its requests \
                 are held until a check gets an answer"
            );
            checks::went_down(w, scope, &why);
        } else {
            // The backend took the request and failed it: that request's trouble, not
            // the backend's absence; it waits for the next check, the scope stays up.
            shm::locked(w.mcf, || sc.end_check());
        }
    }
    // Back from a failed attempt, it is no longer in flight, held again or not.
    let mut flight = f.and_then(|f| f.flight());
    if let Some(fl) = flight.as_deref_mut() {
        w.flight_end(fl);
    }
    // Given up: a body nginx did not keep, the deadline, or a real stop of nginx (which
    // released what it held already and would close the connection, not release it).
    if r.request_body_no_buffering() != 0 || elapsed >= lcf.max_time_ms as u64 || w.stopping() {
        sc.count_gave_up();
        if let Some(fl) = flight {
            fl.outcome = Outcome::GaveUp;
        }
        if let Some(st) = f.and_then(|f| f.held()) {
            st.outcome = Outcome::GaveUp;
        }
        r.set_error_page(1);
        return match lcf.on_timeout {
            OnTimeout::Reject if r.request_body_no_buffering() == 0 => reject(r),
            _ => status as ngx_int_t,
        };
    }
    let Some(st) = request::held(r, f, scope) else {
        return SERVER_ERROR;
    };
    let first = before.map_or(true, |b| b.2 == 0);
    st.arrival = before.map(|b| b.0).filter(|&a| a != 0).unwrap_or_else(|| w.shared.next_arrival());
    st.epoch = sc.epoch();
    st.since_ms = now;
    st.failed = status;
    sc.count_failed(status, first, now, now + checks::jitter(lcf.check_interval_ms as u64, now));
    if first {
        sc.count_held();
    }
    // The next failure comes back here too: nginx applies an error page once per request
    // (`recursive_error_pages off`) and counts redirects; the deadline bounds the retries.
    r.set_error_page(0);
    r.set_uri_changes(NGX_HTTP_MAX_URI_CHANGES + 1);
    w.hold_in_order(st);
    let left = (lcf.max_time_ms as u64).saturating_sub(elapsed).max(1);
    // SAFETY: a live request has a connection with a log.
    ngx_log_debug!(
        unsafe { (*r.connection).log },
        "intermission: request #{} failed ({}): held until the backend is back",
        st.arrival,
        status
    );
    wait(r, st, left as ngx::ffi::ngx_msec_t)
}

/// A held request waits: its `max_time` timer, and the handlers that notice a client that
/// leaves and a release.
fn wait(
    r: &mut ngx_http_request_t,
    st: &mut ReqState,
    timer_ms: ngx::ffi::ngx_msec_t,
) -> ngx_int_t {
    st.timer.handler = Some(on_max_time);
    st.timer.data = r.connection.cast();
    // SAFETY: a live request's connection and log; the timer is deleted by the release or
    // by the pool cleanup, before the state's memory goes.
    unsafe {
        st.timer.log = (*r.connection).log;
        ngx_add_timer(&mut st.timer, timer_ms);
    }
    r.read_event_handler = Some(ngx_http_test_reading);
    r.write_event_handler = Some(resume);
    // SAFETY: a live request's connection and its read event; a posted event runs after the
    // current handler returns.
    unsafe {
        let rev = (*r.connection).read;
        // A client that closed right after sending its request: epoll reported the close
        // (EPOLLRDHUP) with the request's bytes and will not again, so look at it now.
        if (*rev).pending_eof() != 0 {
            ngx_post_event(rev, addr_of_mut!(ngx_posted_events));
        }
    }
    // SAFETY: as above.
    ngx_log_debug!(unsafe { (*r.connection).log }, "intermission: holding request #{}", st.arrival);
    AGAIN
}

/// Answers 503 with `Retry-After`.
fn reject(r: &mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: `Request` is a transparent view of the same request.
    let req = unsafe { Request::from_ngx_http_request(r) };
    if req.add_header_out("Retry-After", RETRY_AFTER).is_none() {
        return SERVER_ERROR;
    }
    UNAVAILABLE
}

/// The write handler of a held request: runs when a release or a timeout posts its write
/// event (and, spuriously, whenever the connection becomes writable while it is held).
unsafe extern "C" fn resume(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request handlers with a live request.
    let r = unsafe { &mut *r };
    let Some(st) = request::find(r).and_then(|f| f.held()) else { return };
    // Its `check=` subrequest ended (nginx runs the main request's handler then). A
    // release it brings about posts this handler again.
    let before = st.outcome;
    checks::probe_result(st);
    if before == Outcome::Held && st.outcome != Outcome::Held {
        return;
    }
    match st.outcome {
        Outcome::Held => return,
        Outcome::Rejected => {
            let rc = reject(r);
            // SAFETY: a live request, finalized once.
            unsafe { ngx_http_finalize_request(r, rc) };
            return;
        }
        Outcome::GaveUp => {
            // nginx's answer to the failure, with no error page: it had one.
            r.set_error_page(1);
            // SAFETY: as above.
            unsafe { ngx_http_finalize_request(r, st.failed as ngx_int_t) };
            return;
        }
        _ => {}
    }
    // SAFETY: a live request's connection and its read event.
    unsafe {
        let c = r.connection;
        if ngx_handle_read_event((*c).read, 0) != Status::NGX_OK.0 {
            ngx_http_finalize_request(r, SERVER_ERROR);
            return;
        }
        ngx_log_debug!(
            (*c).log,
            "intermission: request #{} continues after {} ms",
            st.arrival,
            st.held_ms
        );
        r.read_event_handler = Some(ngx_http_block_reading);
        r.write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
    }
}

/// `intermission_max_time` passed for a held request.
unsafe extern "C" fn on_max_time(ev: *mut ngx_event_t) {
    // SAFETY: this handler is only set on the `timer` of a `ReqState`, deleted before the
    // state's memory goes.
    let st = unsafe { &mut *ReqState::from_timer(ev) };
    let Some(w) = worker::get() else { return };
    if st.outcome != Outcome::Held {
        return;
    }
    // SAFETY: a held request is alive.
    let r = unsafe { &*st.r };
    let outcome = match conf::loc_conf(r).map(|l| l.on_timeout) {
        Some(OnTimeout::Reject) => Outcome::Rejected,
        _ if st.failed != 0 => Outcome::GaveUp,
        _ => Outcome::Timeout,
    };
    // SAFETY: as above.
    ngx_log_debug!(
        unsafe { (*r.connection).log },
        "intermission: held request #{} timed out",
        st.arrival
    );
    w.time_out(st, outcome);
}
