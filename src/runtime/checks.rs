//! The readiness check of a scope that holds requests because of a failure
//! (`intermission_on_failure hold`), one at a time over the whole instance (a lease in the
//! zone), every `interval` with jitter, by the worker that holds the oldest such request
//! over the instance (another, if that one does not within `ORDER_GRACE_MS`). With
//! `check=URI`: a subrequest of that request, as `auth_request` makes, whose status says
//! whether the backend is ready (2xx, 3xx) or down (`probe_result`). Without: a trial send
//! of that request; its answer brings the scope up (`answered`), its failure to connect puts
//! it down (`access::hold_failed`).

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};
use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_event_t, ngx_http_post_subrequest_t, ngx_http_request_body_t,
    ngx_http_request_t, ngx_http_run_posted_requests, ngx_http_subrequest, ngx_int_t, ngx_log_t,
    ngx_msec_t, ngx_pcalloc, ngx_str_t, ngx_uint_t, NGX_HTTP_SUBREQUEST_WAITED, NGX_OK,
};

use ngx::ffi::NGX_LOG_ERR;
use ngx::{ngx_log_debug, ngx_log_error};

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;

use super::release::ORDER_GRACE_MS;
use super::request::{self, Probe, ReqState};
use super::{get, Worker};
use crate::conf::{self, LocConf};
use crate::ngx_util::{now_unix_ms, process_alive, LOG_STATE};
use crate::{failure, persist, shm};

impl Worker {
    /// On the tick: sends the readiness check of each scope that needs one, if this worker
    /// holds a request for it and the instance's check is free and due. Not while the
    /// scope is paused: a check sends a request to the backend.
    /// A check that is not due yet gets a timer of its own, so that it starts on time rather
    /// than at the next tick.
    pub(super) fn check_failures(&self) {
        let mut due: Option<u64> = None;
        let mut probes = Vec::new();
        for i in 0..self.queues.len() {
            let sc = self.scope(i);
            if !sc.is_failing() || sc.is_paused() {
                continue;
            }
            let Some((st, lcf, left)) = self.check_candidate(i) else { continue };
            let now = now_unix_ms();
            // The check sends the oldest request held over the instance: a worker whose
            // candidate is younger than another's oldest leaves the check to that one, for
            // up to ORDER_GRACE_MS past its due time (that one may be busy or stopped).
            if let Some(at) = sc.check_due_ms(now) {
                let older = self.shared.others_oldest_held(self.shm(i), self.slot, process_alive);
                if older < st.arrival && now < at + ORDER_GRACE_MS {
                    let at = at + ORDER_GRACE_MS;
                    due = Some(due.map_or(at, |d| d.min(at)));
                    continue;
                }
            }
            let next = jitter(lcf.check_interval_ms as u64, now);
            if !shm::locked(self.mcf, || sc.take_check(now, left + 1000, next)) {
                if let Some(at) = sc.check_due_ms(now).filter(|&at| at > now) {
                    due = Some(due.map_or(at, |d| d.min(at)));
                }
                continue;
            }
            // SAFETY: a held request is alive.
            if lcf.check_uri.len > 0 && unsafe { (*(*st.r).main).subrequests() } > 1 {
                probes.push((st, lcf.check_uri));
                continue;
            }
            self.trial(st);
        }
        // After the loop: a subrequest may run, and end, at once.
        for (st, uri) in probes {
            if !probe(st, uri) {
                self.scope(st.scope).end_check();
                self.trial(st);
            }
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

    /// Sends a held request as the readiness check (the lease is taken).
    fn trial(&self, st: &mut ReqState) {
        st.check = true;
        self.let_go(st, " as the readiness check");
        self.publish_held(st.scope);
    }

    /// The oldest request of queue `i` in a location with `intermission_on_failure hold`
    /// (and no check of its own running), its location and what is left of its deadline
    /// (ms).
    fn check_candidate(&self, i: usize) -> Option<(&'static mut ReqState, &'static LocConf, u64)> {
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
                    if st.probe == Probe::None {
                        let end = failure::arrived_ms(r) + l.max_time_ms as u64;
                        return Some((st, l, end.saturating_sub(now)));
                    }
                }
                q = (*q).next;
            }
        }
        None
    }
}

/// Starts the `check=` subrequest of a held request, as `auth_request` does: a GET of `uri`
/// whose body is thrown away, with no body of its own. False if nginx would not make it.
fn probe(st: &mut ReqState, uri: ngx_str_t) -> bool {
    let r = st.r;
    // SAFETY: a held request is alive; its pool outlives the subrequest, which is part of
    // it; nginx copies the URI and arguments it is given into the subrequest.
    unsafe {
        let ps = ngx_pcalloc((*r).pool, size_of::<ngx_http_post_subrequest_t>())
            .cast::<ngx_http_post_subrequest_t>();
        let body = ngx_pcalloc((*r).pool, size_of::<ngx_http_request_body_t>());
        let Some(ps) = ps.as_mut() else { return false };
        if body.is_null() {
            return false;
        }
        ps.handler = Some(probe_done);
        ps.data = ptr::from_mut(st).cast();
        let all = uri.as_bytes();
        let (path, args) = match all.iter().position(|&b| b == b'?') {
            Some(q) => (&all[..q], &all[q + 1..]),
            None => (all, &all[all.len()..]),
        };
        let mut path = ngx_str_t { len: path.len(), data: path.as_ptr().cast_mut() };
        let mut args = ngx_str_t { len: args.len(), data: args.as_ptr().cast_mut() };
        let mut sr: *mut ngx_http_request_t = ptr::null_mut();
        let flags = NGX_HTTP_SUBREQUEST_WAITED as ngx_uint_t;
        if ngx_http_subrequest(r, &mut path, &mut args, &mut sr, ps, flags) != NGX_OK as ngx_int_t {
            return false;
        }
        let sr = &mut *sr;
        sr.request_body = body.cast();
        sr.set_header_only(1);
        // The held request's body is not the check's: no length of it goes to the backend.
        sr.headers_in.content_length_n = -1;
        sr.headers_in.content_length = ptr::null_mut();
        sr.headers_in.set_chunked(0);
        st.probe = Probe::Running;
        ngx_log_debug!((*(*r).connection).log, "intermission: readiness check {}", uri);
        // Made outside the request's own handlers: nginx runs posted requests only after
        // those.
        ngx_http_run_posted_requests((*r).connection);
    }
    true
}

/// The `check=` subrequest ends (nginx may call this more than once, the last with the
/// status it answered): its status is kept for the held request, whose write handler nginx
/// then runs (`probe_result`).
unsafe extern "C" fn probe_done(
    sr: *mut ngx_http_request_t,
    data: *mut c_void,
    rc: ngx_int_t,
) -> ngx_int_t {
    // SAFETY: `data` is the held request's state, alive while its subrequest is.
    let (sr, st) = unsafe { (&*sr, &mut *data.cast::<ReqState>()) };
    let status = match sr.headers_out.status {
        0 if rc >= 100 => rc as u32,
        0 => 502,
        s => s as u32,
    };
    st.probe_status = status;
    st.probe = Probe::Done;
    rc
}

/// The held request's write handler ran after its `check=` subrequest ended: a 2xx or 3xx
/// says the backend is ready (the scope is up and its held requests go, in every worker);
/// anything else that it is not (the scope is down).
pub fn probe_result(st: &mut ReqState) {
    if st.probe != Probe::Done {
        return;
    }
    st.probe = Probe::None;
    let Some(w) = get() else { return };
    // SAFETY: the worker's cycle log.
    let log = unsafe { (*ngx::ffi::ngx_cycle).log };
    // SAFETY: a held request is alive.
    let uri = unsafe { conf::loc_conf(&*st.r).map_or(ngx_str_t::default(), |l| l.check_uri) };
    let uri = String::from_utf8_lossy(uri.as_bytes()).into_owned();
    let status = st.probe_status;
    if (200..400).contains(&status) {
        let why = format!("the readiness check {uri} answered {status}");
        come_up(w, st.scope, log, &why, 0);
    } else {
        let why = format!(
            "the readiness check {uri} answered {status}; its requests are held until a check \
             answers 2xx or 3xx"
        );
        went_down(w, st.scope, &why);
    }
}

/// A readiness check says the backend is not there: the scope is down. Said once (`why`),
/// at level error.
pub fn went_down(w: &Worker, i: usize, why: &str) {
    let sc = w.scope(i);
    let (down, f, saved) = shm::locked(w.mcf, || {
        persist::change(w.mcf, w.shared, || {
            let down = sc.go_down(now_unix_ms());
            (down, down)
        })
    });
    // SAFETY: the worker's cycle log.
    let log = unsafe { (*ngx::ffi::ngx_cycle).log };
    super::followed(w, log, f);
    if down {
        ngx_log_error!(LOG_STATE, log, "intermission: scope \"{}\" is down: {}", sc.name(), why);
        not_saved(log, sc.name(), "down", saved);
    }
}

/// The state file did not take a scope going down or up: a binary upgrade or a restart
/// would start the new zone with the state before. Said at level error, each time.
fn not_saved(log: *mut ngx_log_t, scope: String, state: &str, saved: Option<Result<(), String>>) {
    if let Some(Err(e)) = saved {
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\" is {} but not persisted: {}",
            scope,
            state,
            e
        );
    }
}

/// The backend answered (`why`): the scope of configuration index `i` is up and its held
/// requests go, in every worker, unless a pause still holds them. Said at level error if it
/// was down, with how many it held (`more` held that are not counted as held any longer).
fn come_up(w: &Worker, i: usize, log: *mut ngx_log_t, why: &str, more: u64) {
    let sc = w.scope(i);
    let (up, f, saved) = shm::locked(w.mcf, || {
        persist::change(w.mcf, w.shared, || {
            let up = sc.come_up();
            (up, up.is_some_and(|since| since != 0))
        })
    });
    super::followed(w, log, f);
    let Some(since) = up else { return };
    not_saved(log, sc.name(), "up", saved);
    if since != 0 {
        ngx_log_error!(
            LOG_STATE,
            log,
            "intermission: scope \"{}\" is up again after {} ms down: {}; {} request(s) were \
             held, now released",
            sc.name(),
            now_unix_ms().saturating_sub(since),
            why,
            w.shared.held_now(w.shm(i)) + more
        );
    }
    w.resumed(w.shm(i));
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
    // The trial itself was held too.
    come_up(w, i, log, "the backend answered", 1);
}
