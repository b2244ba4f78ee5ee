//! Requests in flight (passed on by an `intermission` location, not yet finished) and the
//! drain waiters that wait for them to end. Both are this worker's figures, published to its
//! slot in the shared zone, where they count only while this process lives.

use core::ptr;

use intermission_core::shared::TABLE_SCOPES;
use ngx::ffi::{ngx_post_event, ngx_posted_events, ngx_queue_t};

use super::{wake, Worker};
use crate::ngx_util::process_alive;
use crate::shm;

impl Worker {
    /// A request of scope `i` passed on: it is in flight until its pool cleanup.
    pub fn inflight_start(&self, i: usize) {
        let n = &self.inflight[i];
        n.set(n.get() + 1);
        self.shared.set_inflight(self.slot, self.shm(i), n.get());
    }

    /// An in-flight request of scope `i` finished. The last one wakes the drain waiters.
    pub fn inflight_end(&self, i: usize) {
        let n = &self.inflight[i];
        n.set(n.get().saturating_sub(1));
        let shm = self.shm(i);
        self.shared.set_inflight(self.slot, shm, n.get());
        if n.get() != 0 {
            return;
        }
        if self.waiting[shm].get() > 0 {
            // Not from inside another request's cleanup: after the current handler.
            // SAFETY: the event lives in the leaked state.
            unsafe { ngx_post_event(self.check.get(), ptr::addr_of_mut!(ngx_posted_events)) };
        }
        if self.shared.others_wait(shm, self.slot) {
            // A waiter's process may have died with it: its figures go, and only a live
            // one is woken.
            if self.shared.waiting_pids(shm, self.slot).any(|pid| !process_alive(pid)) {
                shm::locked(self.mcf, || self.shared.reap(process_alive));
            }
            if self.shared.others_wait(shm, self.slot) {
                wake::notify();
            }
        }
    }

    /// In-flight requests of a scope of the shared table, over all live workers.
    pub fn inflight_of(&self, shm: usize) -> u64 {
        self.shared.inflight(shm, process_alive)
    }

    /// A drain waiter of this worker starts (`true`) or stops waiting for a scope of the
    /// shared table.
    pub fn count_waiter(&self, shm: usize, starts: bool) {
        let c = &self.waiting[shm.min(TABLE_SCOPES - 1)];
        c.set(if starts { c.get() + 1 } else { c.get().saturating_sub(1) });
        self.shared.set_waiters(self.slot, shm, c.get());
    }

    /// The drain waiters' list head.
    pub fn waiters(&self) -> *mut ngx_queue_t {
        self.waiters.get()
    }
}
