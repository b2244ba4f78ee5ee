//! Holding a request, and letting it go: released, timed out or aborted. Each change is
//! published to this worker's slot in the shared zone (held, oldest, newest epoch).

use core::ptr;

use ngx::ffi::{
    ngx_del_timer, ngx_post_event, ngx_posted_events, ngx_queue_insert_before, ngx_queue_remove,
};

use ngx::ngx_log_debug;

use super::inflight::Flight;
use super::request::{Outcome, ReqState};
use super::{Worker, WOKEN};
use crate::ngx_util::{now_unix_ms, process_alive};
use crate::shm;

impl Worker {
    pub(super) fn first(&self, i: usize) -> Option<&'static mut ReqState> {
        let q = &self.queues[i];
        if q.len.get() == 0 {
            return None;
        }
        // SAFETY: a non-empty queue's first link is the first field of a live `ReqState`
        // (its pool cleanup unlinks it before the request is freed).
        unsafe { (*q.head.get()).next.cast::<ReqState>().as_mut() }
    }

    /// Queues a request that must wait; it is released in arrival order.
    pub fn hold(&self, st: &mut ReqState) {
        let i = st.scope;
        let q = &self.queues[i];
        // SAFETY: the state lives until its pool cleanup unlinks it; the queue heads are
        // initialized and do not move.
        unsafe { ngx_queue_insert_before(q.head.get(), &mut st.link) };
        q.len.set(q.len.get() + 1);
        if q.newest.get() > 0 && q.newest_epoch.get() == st.epoch {
            q.newest.set(q.newest.get() + 1);
        } else {
            q.newest_epoch.set(st.epoch);
            q.newest.set(1);
        }
        self.scope(i).count_held();
        self.publish_held(i);
        self.arm();
        if st.epoch < self.scope(i).epoch() {
            // Ready at once (behind a windowed release): it goes when its turn comes.
            self.continue_release();
        }
    }

    /// Queues a request held again because of a failure, in arrival order: it may have
    /// arrived before others held since (it was the readiness check).
    pub fn hold_in_order(&self, st: &mut ReqState) {
        let q = &self.queues[st.scope];
        let head = q.head.get();
        // SAFETY: every link in the queue is the first field of a live `ReqState`; the
        // state lives until its pool cleanup unlinks it.
        unsafe {
            let mut at = (*head).next;
            while at != head && (*at.cast::<ReqState>()).arrival < st.arrival {
                at = (*at).next;
            }
            ngx_queue_insert_before(at, &mut st.link);
        }
        q.len.set(q.len.get() + 1);
        if q.newest.get() > 0 && q.newest_epoch.get() == st.epoch {
            q.newest.set(q.newest.get() + 1);
        } else if q.newest_epoch.get() < st.epoch || q.newest.get() == 0 {
            q.newest_epoch.set(st.epoch);
            q.newest.set(1);
        }
        self.publish_held(st.scope);
        self.arm();
    }

    /// Takes a held request out of its queue; it is no longer counted as held.
    pub(super) fn unhold(&self, st: &mut ReqState, outcome: Outcome) {
        // SAFETY: a state whose outcome is `Held` is linked in this worker's queue.
        unsafe { ngx_queue_remove(&mut st.link) };
        if st.timer.timer_set() != 0 {
            // SAFETY: the timer is in nginx's tree.
            unsafe { ngx_del_timer(&mut st.timer) };
        }
        st.outcome = outcome;
        st.held_ms = now_unix_ms().saturating_sub(st.since_ms);
        let i = st.scope;
        let q = &self.queues[i];
        q.len.set(q.len.get() - 1);
        if q.len.get() == 0 && q.pace_wait.get() == WOKEN {
            // Nothing waits to be woken any more; the next ready one tries at once.
            q.pace_wait.set(0);
        }
        if st.epoch == q.newest_epoch.get() {
            q.newest.set(q.newest.get().saturating_sub(1));
        }
        self.scope(i).observe_hold(st.held_ms);
        let outcome = match outcome {
            Outcome::Released if st.failed != 0 => {
                // A readiness check counts as sent again once the backend answers it.
                if !st.check {
                    self.scope(i).count_retried();
                }
                Outcome::Retried
            }
            o => o,
        };
        st.outcome = outcome;
        if matches!(outcome, Outcome::Released | Outcome::Timeout | Outcome::Retried) {
            // SAFETY: a held request is alive.
            st.attempts = crate::failure::attempts(unsafe { &*st.r });
            st.flight = Flight::idle(st.r, i, outcome);
            // SAFETY: a held request is alive.
            let lcf = crate::conf::loc_conf(unsafe { &*st.r });
            self.flight_start(&mut st.flight, lcf);
        }
    }

    /// Releases a held request: it is in flight, and nginx runs its phases on from where
    /// they stopped once its posted write event runs. `why` ends the debug line.
    pub(super) fn let_go(&self, st: &mut ReqState, why: &str) {
        self.unhold(st, Outcome::Released);
        // SAFETY: a held request and its connection are alive; a posted write event runs
        // after the current handler returns, in the order of posting.
        unsafe {
            let c = (*st.r).connection;
            ngx_log_debug!((*c).log, "intermission: releasing request #{}{}", st.arrival, why);
            ngx_post_event((*c).write, ptr::addr_of_mut!(ngx_posted_events));
        }
    }

    /// A request whose client left while held: counted as aborted, never forwarded.
    pub fn abort(&self, st: &mut ReqState) {
        self.unhold(st, Outcome::Aborted);
        if st.check {
            self.scope(st.scope).end_check();
        }
        self.scope(st.scope).count_aborted();
        self.publish_held(st.scope);
    }

    /// A request held for `intermission_max_time`: passed on (`Timeout`) or answered 503
    /// (`Rejected`); `hold::resume` does either when its write event runs.
    pub fn time_out(&self, st: &mut ReqState, outcome: Outcome) {
        self.unhold(st, outcome);
        let scope = self.scope(st.scope);
        if st.failed != 0 {
            scope.count_gave_up();
        } else {
            scope.count_timed_out();
        }
        if outcome == Outcome::Rejected {
            scope.count_rejected();
        }
        self.publish_held(st.scope);
        // SAFETY: a held request's connection is alive; its write event runs after this one.
        unsafe {
            ngx_post_event((*(*st.r).connection).write, ptr::addr_of_mut!(ngx_posted_events))
        };
    }

    /// How many requests this worker may hold, for a location whose release window is
    /// `window`: each keeps its client's connection, and its release needs one more, to the
    /// backend: at most `window` at once over the instance, or, without a window, one for
    /// every held request.
    pub fn hold_budget(&self, window: u64) -> u64 {
        let reserve = if window > 0 { window.min(self.room / 2) } else { self.room / 2 };
        (self.room - reserve).max(1)
    }

    /// Requests this worker holds, over its scopes (they share its connections).
    pub fn held_here(&self) -> u64 {
        self.queues.iter().map(|q| u64::from(q.len.get())).sum()
    }

    /// The first time this worker turns a request away because of a cap: says so, at level
    /// error, with what to change (`worker`: its own connections; else max_held).
    pub fn say_capped(&self, log: *mut ngx::ffi::ngx_log_t, scope: usize, worker: bool, cap: u64) {
        let said = if worker { &self.said_capped.0 } else { &self.said_capped.1 };
        if said.replace(true) {
            return;
        }
        let name = self.scope(scope).name();
        if worker {
            ngx::ngx_log_error!(
                crate::ngx_util::LOG_STATE,
                log,
                "intermission: scope \"{}\": a request answered 503: this worker holds {} \
                 requests, as many as its worker_connections leave room for (and for their \
                 release); raise worker_connections (said once per worker)",
                name,
                cap
            );
        } else {
            ngx::ngx_log_error!(
                crate::ngx_util::LOG_STATE,
                log,
                "intermission: scope \"{}\": a request answered 503: {} requests are held, \
                 the scope's intermission_max_held (said once per worker)",
                name,
                cap
            );
        }
    }

    /// Held requests of scope `i` over the workers, as `max_held` counts them: a figure at
    /// the limit is checked once more after the slots of dead processes are cleared.
    pub fn held_for_limit(&self, i: usize, max: u64) -> u64 {
        let held = self.shared.held_now(self.shm(i));
        if held < max {
            return held;
        }
        shm::locked(self.mcf, || self.shared.reap(process_alive));
        self.shared.held_now(self.shm(i))
    }

    /// Writes this worker's held gauges for scope `i` where every worker can read them.
    pub(super) fn publish_held(&self, i: usize) {
        let q = &self.queues[i];
        let (oldest, head) = match self.first(i) {
            Some(st) => (st.since_ms.max(1), (st.arrival, st.epoch)),
            None => (0, (0, 0)),
        };
        self.shared.set_held(self.slot, self.shm(i), q.len.get(), oldest, head);
        self.shared.set_newest(self.slot, self.shm(i), q.newest_epoch.get(), q.newest.get());
    }
}
