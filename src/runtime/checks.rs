//! The readiness check of a scope that holds requests because of a failure
//! (`intermission_on_failure hold`): a trial send of the oldest such request this worker
//! holds, one at a time over the whole instance (a lease in the zone), every `interval`
//! with jitter. Its answer brings the scope up (`answered`); its failure puts it down
//! (`access::hold_failed`).

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};
use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_event_t, ngx_http_request_t, ngx_log_t, ngx_msec_t,
};

use ngx::ffi::NGX_LOG_ERR;
use ngx::ngx_log_error;

use super::request::{self, ReqState};
use super::{get, Worker};
use crate::conf;
use crate::ngx_util::{now_unix_ms, LOG_STATE};
use crate::{failure, shm};

impl Worker {
    /// On the tick: sends the readiness check of each scope that needs one, if this worker
    /// holds a request for it and the instance's check is free and due. Not while the
    /// scope is paused: a check sends a request to the backend.
    /// A check that is not due yet gets a timer of its own, so that it starts on time rather
    /// than at the next tick.
    pub(super) fn check_failures(&self) {
        let mut due: Option<u64> = None;
        for i in 0..self.queues.len() {
            let sc = self.scope(i);
            if !sc.is_failing() || sc.is_paused() {
                continue;
            }
            let Some((st, interval, left)) = self.check_candidate(i) else { continue };
            let now = now_unix_ms();
            let next = jitter(interval, now);
            if !shm::locked(self.mcf, || sc.take_check(now, left + 1000, next)) {
                if let Some(at) = sc.check_due_ms(now).filter(|&at| at > now) {
                    due = Some(due.map_or(at, |d| d.min(at)));
                }
                continue;
            }
            st.check = true;
            self.let_go(st, " as the readiness check");
            self.publish_held(i);
        }
        if let Some(at) = due {
            let ms = at.saturating_sub(now_unix_ms()).max(1);
            // SAFETY: the event lives in the leaked state.
            unsafe {
                let ev = self.ready_check.get();
                if (*ev).timer_set() != 0 {
                    ngx_del_timer(ev);
                }
                ngx_add_timer(ev, ms as ngx_msec_t);
            }
        }
    }

    /// The oldest request of queue `i` in a location with `intermission_on_failure hold`,
    /// its check interval and what is left of its deadline (ms).
    fn check_candidate(&self, i: usize) -> Option<(&'static mut ReqState, u64, u64)> {
        let head = self.queues[i].head.get();
        let now = now_unix_ms();
        // SAFETY: every link in the queue is the first field of a live `ReqState`, whose
        // request is alive.
        unsafe {
            let mut q = (*head).next;
            while q != head {
                let st = &mut *q.cast::<ReqState>();
                let r = &*st.r;
                if let Some(l) = conf::loc_conf(r).filter(|l| l.on_failure == 1) {
                    let end = failure::arrived_ms(r) + l.max_time_ms as u64;
                    return Some((st, l.check_interval_ms as u64, end.saturating_sub(now)));
                }
                q = (*q).next;
            }
        }
        None
    }
}

/// 80 to 100 % of `interval`, so that instances that lost one backend do not check in
/// step, and no wait for a back-up backend is longer than the interval.
pub fn jitter(interval: u64, now: u64) -> u64 {
    // SAFETY: a plain system call.
    let pid = unsafe { libc::getpid() } as u64;
    let x = (now ^ pid.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let span = interval / 5;
    interval - span + if span > 0 { (x >> 33) % (span + 1) } else { 0 }
}

/// A readiness check is due.
pub(super) unsafe extern "C" fn on_ready_check(_ev: *mut ngx_event_t) {
    if let Some(w) = get() {
        w.check_failures();
    }
}

/// The backend's 503 went to the client in a location that holds it (`http_503`): nginx
/// hands it to the error page only with `proxy_intercept_errors on`. Said once per worker,
/// at level error: the configuration does not do what it says.
fn not_intercepted(log: *mut ngx_log_t) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if SAID.swap(true, Relaxed) {
        return;
    }
    ngx_log_error!(
        NGX_LOG_ERR,
        log,
        "intermission: \"intermission_on_failure hold http_503\" did not hold the backend's \
         503: the location needs proxy_intercept_errors on (or fastcgi_, uwsgi_, \
         grpc_intercept_errors on)"
    );
}

/// The header filter saw an answer of the backend: for a request that was held, in a scope
/// that holds requests because of a failure, the backend is back: the scope is up and its
/// held requests go (in every worker), unless a pause still holds them.
pub fn answered(r: &ngx_http_request_t, log: *mut ngx_log_t) {
    // SAFETY: a live request's upstream, null if it has none; a backend's answer comes with
    // the upstream connection it came on.
    let from_backend = unsafe { r.upstream.as_ref().is_some_and(|u| !u.peer.connection.is_null()) };
    if !from_backend {
        return;
    }
    let Some(lcf) = conf::loc_conf(r).filter(|l| l.on_failure == 1) else { return };
    if lcf.fail_503 && r.headers_out.status == 503 {
        not_intercepted(log);
    }
    let (Some(i), Some(w)) = (lcf.scope(), get()) else { return };
    let sc = w.scope(i);
    let Some(st) = request::find(r).and_then(|f| f.held()) else { return };
    if st.check {
        st.check = false;
        sc.count_retried();
    }
    if !sc.is_failing() {
        return;
    }
    let Some(since) = shm::locked(w.mcf, || sc.come_up()) else { return };
    // The check itself was held too.
    let held = w.shared.held_now(w.shm(i)) + 1;
    if since != 0 {
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\" is up again after {} ms down: the backend answered; \
             {} request(s) were held, now released",
            sc.name(),
            now_unix_ms().saturating_sub(since),
            held
        );
    }
    w.resumed(w.shm(i));
}
