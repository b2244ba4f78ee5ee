//! The access-phase handler: holds the requests of a paused scope, and continues them when
//! the worker releases them.
//!
//! Like `limit_req`'s delay: the handler returns `NGX_AGAIN`, the request waits with
//! `ngx_http_test_reading` as its read handler (a client that leaves is noticed and the
//! request finalized, which runs the pool cleanup that unlinks it), and a release posts its
//! write event; `resume` then runs the phases again, where this handler passes it on. The
//! handler never returns `NGX_OK`: under `satisfy any` that would grant access.

use core::ffi::c_void;
use core::mem::size_of;

use ngx::core::Status;
use ngx::ffi::{
    ngx_handle_read_event, ngx_http_block_reading, ngx_http_core_run_phases,
    ngx_http_finalize_request, ngx_http_request_t, ngx_http_test_reading, ngx_int_t,
    ngx_pool_cleanup_add, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_ALERT,
};
use ngx::http::HttpModule;
use ngx::{ngx_log_debug, ngx_log_error};

use crate::conf;
use crate::ngx_util::now_unix_ms;
use crate::worker::{self, Held, State};
use crate::Module;

const DECLINED: ngx_int_t = Status::NGX_DECLINED.0;
const AGAIN: ngx_int_t = Status::NGX_AGAIN.0;

/// The request's `Held`, if this module held it since its last internal redirect.
fn ctx(r: &ngx_http_request_t) -> *mut *mut Held {
    // SAFETY: `ctx` has a slot for every HTTP module, this one's at its `ctx_index`.
    unsafe { r.ctx.add(Module::module().ctx_index).cast() }
}

pub unsafe extern "C" fn access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
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
    // SAFETY: the slot is null or a `Held` in this request's pool.
    let held = unsafe { *ctx(r) };
    if let Some(held) = unsafe { held.as_ref() } {
        // Re-entered: after a release it passes on to the other access handlers.
        return if held.state == State::Held { AGAIN } else { DECLINED };
    }
    let Some(w) = worker::get() else { return DECLINED };
    let Some(epoch) = w.scope(scope).hold_epoch() else { return DECLINED };

    // SAFETY: the cleanup entry's data is `size_of::<Held>()` bytes from the request pool,
    // aligned for any type; it lives until the pool is destroyed, after the cleanup ran.
    let held = unsafe {
        let cln = ngx_pool_cleanup_add(r.pool, size_of::<Held>());
        if cln.is_null() {
            ngx_log_error!(NGX_LOG_ALERT, (*r.connection).log, "intermission: no memory to hold");
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        let held = (*cln).data.cast::<Held>();
        let arrival = w.shared.next_arrival();
        held.write(Held::new(r, arrival, epoch, now_unix_ms(), scope));
        (*cln).handler = Some(cleanup);
        *ctx(r) = held;
        w.hold(held);
        held
    };
    r.read_event_handler = Some(ngx_http_test_reading);
    r.write_event_handler = Some(resume);
    // SAFETY: `held` was written above.
    let arrival = unsafe { (*held).arrival };
    // SAFETY: a live request has a connection with a log.
    ngx_log_debug!(unsafe { (*r.connection).log }, "intermission: holding request #{}", arrival);
    AGAIN
}

/// The write handler of a held request: runs when the release posts its write event (and,
/// spuriously, whenever the connection becomes writable while it is still held).
unsafe extern "C" fn resume(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request handlers with a live request.
    let r = unsafe { &mut *r };
    // SAFETY: set when the request was held; the slot outlives the request's phases.
    let Some(held) = (unsafe { (*ctx(r)).as_ref() }) else { return };
    if held.state != State::Released {
        return;
    }
    // SAFETY: a live request's connection and its read event.
    unsafe {
        let c = r.connection;
        if ngx_handle_read_event((*c).read, 0) != Status::NGX_OK.0 {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
            return;
        }
        ngx_log_debug!(
            (*c).log,
            "intermission: request #{} continues after {} ms",
            held.arrival,
            now_unix_ms().saturating_sub(held.since_ms)
        );
        r.read_event_handler = Some(ngx_http_block_reading);
        r.write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
    }
}

/// Request pool cleanup: a request finalized while still held (its client left, or the
/// worker shut it down) is unlinked, counted as aborted and never forwarded.
unsafe extern "C" fn cleanup(data: *mut c_void) {
    let held = data.cast::<Held>();
    // SAFETY: `data` is the `Held` written in `access_handler`, still in the pool.
    if unsafe { (*held).state } != State::Held {
        return;
    }
    if let Some(w) = worker::get() {
        // SAFETY: a `Held` in state `Held` is linked in this worker's queue.
        unsafe { w.abort(held) };
        // SAFETY: the request is being freed but its connection and log are still there.
        unsafe {
            ngx_log_debug!(
                (*(*(*held).r).connection).log,
                "intermission: held request #{} aborted",
                (*held).arrival
            );
        }
    }
}
