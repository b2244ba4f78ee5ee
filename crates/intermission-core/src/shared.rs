//! The state every worker sees: one block of atomics in an nginx shared zone.
//!
//! No pointer is stored here (it would dangle in another process or after a reload), only
//! numbers and fixed-size names, so the block is valid wherever it is mapped. All-zero
//! bytes are a valid, empty state; the module zeroes the block once when it creates it.
//!
//! Scopes are appended by the master process while it reads the configuration and are never
//! removed, so a worker of an older configuration keeps reading the same index. Gauges that
//! a worker owns (held requests) live in that worker's process slot, so that a worker that
//! dies takes its counts with it: readers skip slots whose process is gone.
//!
//! Pause and resume must be serialized by the caller (the module holds the zone's mutex);
//! the request path only reads, without a lock.

use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering::*};

use crate::scope_name;

/// Scopes one nginx instance can know of, over all its reloads.
pub const MAX_SCOPES: usize = 64;
/// nginx's `NGX_MAX_PROCESSES`: process slots are indexes below it.
pub const MAX_SLOTS: usize = 1024;
/// Marks an initialized block and its layout version.
const MAGIC: u64 = 0x4e47_5849_4e54_0003;
/// Upper bounds of the hold-time histogram's buckets, in ms (then +Inf).
pub const HOLD_BUCKETS_MS: [u64; 12] =
    [10, 50, 100, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 300_000];

#[repr(C)]
pub struct Shared {
    magic: AtomicU64,
    arrivals: AtomicU64,
    nscopes: AtomicU32,
    scopes: [Scope; MAX_SCOPES],
    /// The process in each slot, 0 if none: contiguous, so that summing the live workers'
    /// gauges on the request path reads a few cache lines, not one per slot.
    pids: [AtomicI64; MAX_SLOTS],
    gauges: [[SlotScope; MAX_SCOPES]; MAX_SLOTS],
}

#[repr(C)]
pub struct Scope {
    name_len: AtomicU32,
    name: [AtomicU8; scope_name::MAX_LEN],
    paused: AtomicU32,
    /// How many times the scope was resumed: a request held under an older epoch is released.
    epoch: AtomicU64,
    /// Unix ms of the pause, 0 while not paused.
    paused_since_ms: AtomicU64,
    /// Unix ms at which the scope resumes by itself, 0 if never.
    auto_resume_at_ms: AtomicU64,
    /// Drain waiters over all workers: a worker whose in-flight count drops to zero wakes
    /// the others only when somebody waits.
    drain_waiters: AtomicU32,
    held_total: AtomicU64,
    released_total: AtomicU64,
    aborted_total: AtomicU64,
    timed_out_total: AtomicU64,
    rejected_total: AtomicU64,
    hold_buckets: [AtomicU64; HOLD_BUCKETS_MS.len() + 1],
    hold_sum_ms: AtomicU64,
}

/// One worker's gauges for one scope; only that worker writes them.
#[repr(C)]
struct SlotScope {
    held: AtomicU32,
    /// Requests that passed an intermission location and have not finished.
    inflight: AtomicU32,
    /// Unix ms at which this worker's oldest held request arrived, 0 if none.
    oldest_ms: AtomicU64,
    /// The epoch of this worker's newest held requests (high 32 bits) and how many it holds
    /// from that epoch (low 32 bits): a resume counts only those of the pause it ends, not
    /// the ones an earlier resume released that this worker has not let go of yet.
    newest: AtomicU64,
}

/// A scope as a control request reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeStatus {
    pub name: String,
    pub paused: bool,
    /// Unix ms of the pause; 0 while not paused.
    pub paused_since_ms: u64,
    pub held: u64,
    /// Unix ms at which the oldest held request arrived, over all live workers.
    pub oldest_held_ms: Option<u64>,
    pub inflight: u64,
    /// Unix ms at which the scope resumes by itself.
    pub auto_resume_at_ms: Option<u64>,
    pub held_total: u64,
    pub released_total: u64,
    pub aborted_total: u64,
    pub timed_out_total: u64,
    pub rejected_total: u64,
    /// Hold times: a count per bucket of [`HOLD_BUCKETS_MS`] then +Inf (not cumulative).
    pub hold_buckets: [u64; HOLD_BUCKETS_MS.len() + 1],
    pub hold_sum_ms: u64,
}

impl Shared {
    /// Bytes the shared zone must hold for this block.
    pub const SIZE: usize = core::mem::size_of::<Shared>();

    /// Marks a zeroed block as initialized.
    pub fn init(&self) {
        self.magic.store(MAGIC, SeqCst);
    }

    /// Whether the block was initialized by this layout version.
    pub fn is_initialized(&self) -> bool {
        self.magic.load(SeqCst) == MAGIC
    }

    /// The index of the scope of this name, added if new. Called by the master only.
    pub fn register(&self, name: &str) -> Result<usize, String> {
        if let Some(i) = self.find(name) {
            return Ok(i);
        }
        let n = self.nscopes.load(SeqCst) as usize;
        if n >= MAX_SCOPES {
            return Err(format!(
                "no room for scope \"{name}\": at most {MAX_SCOPES} scopes over the life of \
                 this nginx (restart nginx to forget removed ones)"
            ));
        }
        let scope = &self.scopes[n];
        for (dst, &b) in scope.name.iter().zip(name.as_bytes()) {
            dst.store(b, Relaxed);
        }
        scope.name_len.store(name.len() as u32, Release);
        // Publish the entry only once its name is complete.
        self.nscopes.store(n as u32 + 1, SeqCst);
        Ok(n)
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        let n = self.nscopes.load(SeqCst) as usize;
        (0..n.min(MAX_SCOPES)).find(|&i| self.scopes[i].name() == name)
    }

    /// The scope at an index [`Shared::register`] returned.
    pub fn scope(&self, i: usize) -> &Scope {
        &self.scopes[i.min(MAX_SCOPES - 1)]
    }

    /// A number for every held request, increasing over all workers: it orders arrivals.
    pub fn next_arrival(&self) -> u64 {
        self.arrivals.fetch_add(1, Relaxed) + 1
    }

    /// A worker starting in `slot` clears what a dead predecessor left there, then claims it.
    pub fn claim_slot(&self, slot: usize, pid: i64) {
        let (Some(p), Some(gauges)) = (self.pids.get(slot), self.gauges.get(slot)) else { return };
        p.store(0, SeqCst);
        for g in gauges {
            g.held.store(0, Relaxed);
            g.inflight.store(0, Relaxed);
            g.oldest_ms.store(0, Relaxed);
            g.newest.store(0, Relaxed);
        }
        p.store(pid, SeqCst);
    }

    /// A worker that exits cleanly gives its slot back.
    pub fn leave_slot(&self, slot: usize, pid: i64) {
        if let Some(p) = self.pids.get(slot) {
            let _ = p.compare_exchange(pid, 0, SeqCst, SeqCst);
        }
    }

    fn gauge(&self, slot: usize, scope: usize) -> Option<&SlotScope> {
        self.gauges.get(slot).and_then(|g| g.get(scope))
    }

    /// Sets a worker's gauges for one scope: how many it holds and since when (unix ms).
    pub fn set_held(&self, slot: usize, scope: usize, held: u32, oldest_ms: u64) {
        let Some(g) = self.gauge(slot, scope) else { return };
        g.held.store(held, Relaxed);
        g.oldest_ms.store(oldest_ms, Relaxed);
    }

    /// Sets how many of a worker's held requests of one scope were held under `epoch`, the
    /// newest epoch it holds requests of.
    pub fn set_newest(&self, slot: usize, scope: usize, epoch: u64, held: u32) {
        if let Some(g) = self.gauge(slot, scope) {
            g.newest.store((epoch & 0xffff_ffff) << 32 | u64::from(held), Relaxed);
        }
    }

    /// The requests of a scope held under `epoch` over the live workers: what the resume
    /// that ends that epoch's pause releases.
    pub fn held_in_epoch(&self, scope: usize, epoch: u64, alive: impl Fn(i64) -> bool) -> u64 {
        let scope = scope.min(MAX_SCOPES - 1);
        self.live_slots(alive)
            .map(|s| self.gauges[s][scope].newest.load(Relaxed))
            .filter(|v| v >> 32 == epoch & 0xffff_ffff)
            .map(|v| v & 0xffff_ffff)
            .sum()
    }

    /// Sets a worker's in-flight count for one scope.
    pub fn set_inflight(&self, slot: usize, scope: usize, inflight: u32) {
        if let Some(g) = self.gauge(slot, scope) {
            g.inflight.store(inflight, Relaxed);
        }
    }

    /// Held requests of a scope over the workers that have a slot, without checking that
    /// they still run: cheap enough for the request path (a dead worker's slot is cleared
    /// when the master starts its replacement).
    pub fn held_now(&self, scope: usize) -> u64 {
        let scope = scope.min(MAX_SCOPES - 1);
        (0..MAX_SLOTS)
            .filter(|&s| self.pids[s].load(Relaxed) != 0)
            .map(|s| u64::from(self.gauges[s][scope].held.load(Relaxed)))
            .sum()
    }

    /// In-flight requests of a scope over the live workers.
    pub fn inflight(&self, scope: usize, alive: impl Fn(i64) -> bool) -> u64 {
        let scope = scope.min(MAX_SCOPES - 1);
        self.live_slots(alive)
            .map(|s| u64::from(self.gauges[s][scope].inflight.load(Relaxed)))
            .sum()
    }

    fn live_slots<'a>(
        &'a self,
        alive: impl Fn(i64) -> bool + 'a,
    ) -> impl Iterator<Item = usize> + 'a {
        (0..MAX_SLOTS).filter(move |&s| {
            let pid = self.pids[s].load(SeqCst);
            pid != 0 && alive(pid)
        })
    }

    /// The status of one scope. `alive(pid)` tells whether a worker still runs: the gauges of
    /// one that died are not counted.
    pub fn status(&self, i: usize, alive: impl Fn(i64) -> bool) -> ScopeStatus {
        let i = i.min(MAX_SCOPES - 1);
        let scope = self.scope(i);
        let (mut held, mut inflight, mut oldest) = (0u64, 0u64, None::<u64>);
        for s in self.live_slots(alive) {
            let g = &self.gauges[s][i];
            inflight += u64::from(g.inflight.load(Relaxed));
            let h = g.held.load(Relaxed);
            if h > 0 {
                held += u64::from(h);
                let o = g.oldest_ms.load(Relaxed);
                if o != 0 {
                    oldest = Some(oldest.map_or(o, |x| x.min(o)));
                }
            }
        }
        let mut hold_buckets = [0; HOLD_BUCKETS_MS.len() + 1];
        for (dst, src) in hold_buckets.iter_mut().zip(&scope.hold_buckets) {
            *dst = src.load(Relaxed);
        }
        let auto = scope.auto_resume_at_ms.load(SeqCst);
        ScopeStatus {
            name: scope.name(),
            paused: scope.is_paused(),
            paused_since_ms: scope.paused_since_ms.load(SeqCst),
            held,
            oldest_held_ms: oldest,
            inflight,
            auto_resume_at_ms: (auto != 0).then_some(auto),
            held_total: scope.held_total.load(Relaxed),
            released_total: scope.released_total.load(Relaxed),
            aborted_total: scope.aborted_total.load(Relaxed),
            timed_out_total: scope.timed_out_total.load(Relaxed),
            rejected_total: scope.rejected_total.load(Relaxed),
            hold_buckets,
            hold_sum_ms: scope.hold_sum_ms.load(Relaxed),
        }
    }
}

impl Scope {
    pub fn name(&self) -> String {
        let len = (self.name_len.load(Acquire) as usize).min(scope_name::MAX_LEN);
        self.name[..len].iter().map(|b| char::from(b.load(Relaxed))).collect()
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(SeqCst) != 0
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(SeqCst)
    }

    /// On the request path: `Some(epoch)` if a request must be held now. The request is
    /// released once the scope's epoch has moved past the one returned here.
    ///
    /// The epoch is read before the flag, and [`Scope::resume`] clears the flag before it
    /// moves the epoch: a request that sees the flag set under the new epoch was held by a
    /// later pause, never by one that has already ended.
    pub fn hold_epoch(&self) -> Option<u64> {
        let epoch = self.epoch.load(SeqCst);
        self.is_paused().then_some(epoch)
    }

    /// Pauses; false if it was paused already. A pause sets the auto-resume deadline (unix
    /// ms), or clears it with `None`, also when the scope was paused already. Callers
    /// serialize pause and resume.
    pub fn pause(&self, now_ms: u64, auto_resume_at_ms: Option<u64>) -> bool {
        self.auto_resume_at_ms.store(auto_resume_at_ms.unwrap_or(0), SeqCst);
        if self.paused.swap(1, SeqCst) != 0 {
            return false;
        }
        self.paused_since_ms.store(now_ms.max(1), SeqCst);
        true
    }

    /// Resumes; false if it was not paused. Callers serialize pause and resume.
    pub fn resume(&self) -> bool {
        self.auto_resume_at_ms.store(0, SeqCst);
        if self.paused.swap(0, SeqCst) == 0 {
            return false;
        }
        self.paused_since_ms.store(0, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        true
    }

    /// When the scope was paused (unix ms), if it is.
    pub fn paused_since(&self) -> Option<u64> {
        let t = self.paused_since_ms.load(SeqCst);
        (t != 0).then_some(t)
    }

    /// The auto-resume deadline (unix ms), if one is set.
    pub fn auto_resume_at(&self) -> Option<u64> {
        let at = self.auto_resume_at_ms.load(SeqCst);
        (at != 0).then_some(at)
    }

    /// Resumes if the auto-resume deadline has passed; true if it did. Callers serialize it
    /// with pause and resume, so that of the workers whose timers fire, one resumes.
    pub fn resume_if_due(&self, now_ms: u64) -> bool {
        match self.auto_resume_at() {
            Some(at) if at <= now_ms => self.resume(),
            _ => false,
        }
    }

    /// A drain waiter starts (`true`) or stops waiting for this scope.
    pub fn count_waiter(&self, starts: bool) {
        if starts {
            self.drain_waiters.fetch_add(1, SeqCst);
        } else {
            let _ = self.drain_waiters.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        }
    }

    /// Whether anybody waits for this scope to drain.
    pub fn has_waiters(&self) -> bool {
        self.drain_waiters.load(SeqCst) != 0
    }

    /// A request stopped being held after `held_ms`: the hold-time histogram.
    pub fn observe_hold(&self, held_ms: u64) {
        let b =
            HOLD_BUCKETS_MS.iter().position(|&le| held_ms <= le).unwrap_or(HOLD_BUCKETS_MS.len());
        self.hold_buckets[b].fetch_add(1, Relaxed);
        self.hold_sum_ms.fetch_add(held_ms, Relaxed);
    }

    pub fn count_timed_out(&self) {
        self.timed_out_total.fetch_add(1, Relaxed);
    }

    pub fn count_rejected(&self) {
        self.rejected_total.fetch_add(1, Relaxed);
    }

    pub fn count_held(&self) {
        self.held_total.fetch_add(1, Relaxed);
    }

    pub fn count_released(&self, n: u64) {
        self.released_total.fetch_add(n, Relaxed);
    }

    pub fn count_aborted(&self) {
        self.aborted_total.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A zeroed, initialized block on the heap, as the module makes one in shared memory.
    pub(crate) fn new_shared() -> Box<Shared> {
        let layout = std::alloc::Layout::new::<Shared>();
        // SAFETY: all-zero bytes are a valid `Shared` (atomics and arrays of them), and the
        // pointer comes from the global allocator with `Shared`'s own layout.
        let shared = unsafe {
            let p = std::alloc::alloc_zeroed(layout).cast::<Shared>();
            assert!(!p.is_null());
            Box::from_raw(p)
        };
        shared.init();
        shared
    }

    #[test]
    fn registers_scopes_once_and_finds_them() {
        let sh = new_shared();
        assert!(sh.is_initialized());
        assert_eq!(sh.register("default"), Ok(0));
        assert_eq!(sh.register("blue"), Ok(1));
        assert_eq!(sh.register("default"), Ok(0));
        assert_eq!(sh.find("blue"), Some(1));
        assert_eq!(sh.find("green"), None);
        assert_eq!(sh.scope(1).name(), "blue");
    }

    #[test]
    fn refuses_a_scope_past_the_table() {
        let sh = new_shared();
        for i in 0..MAX_SCOPES {
            sh.register(&format!("s{i}")).expect("room"); // ok: test
        }
        assert!(sh.register("one-more").is_err());
        assert_eq!(sh.register("s3"), Ok(3));
    }

    #[test]
    fn pause_and_resume_report_changes_and_move_the_epoch() {
        let sh = new_shared();
        let s = sh.scope(sh.register("default").expect("room")); // ok: test
        assert_eq!(s.hold_epoch(), None);
        assert!(s.pause(1000, None));
        assert!(!s.pause(2000, None));
        assert_eq!(s.hold_epoch(), Some(0));
        assert_eq!(sh.status(0, |_| true).paused_since_ms, 1000);
        assert!(s.resume());
        assert!(!s.resume());
        assert_eq!(s.epoch(), 1);
        assert_eq!(s.hold_epoch(), None);
        assert!(s.pause(3000, None));
        assert_eq!(s.hold_epoch(), Some(1));
    }

    #[test]
    fn auto_resume_is_set_replaced_cleared_and_fires_once() {
        let sh = new_shared();
        let s = sh.scope(sh.register("a").expect("room")); // ok: test
        assert!(s.pause(1000, Some(5000)));
        assert_eq!(s.auto_resume_at(), Some(5000));
        assert!(!s.pause(2000, Some(9000)), "a new enable on a paused scope");
        assert_eq!(s.auto_resume_at(), Some(9000));
        assert!(!s.resume_if_due(8999));
        assert!(s.resume_if_due(9000));
        assert!(!s.resume_if_due(9001), "fires once");
        assert_eq!((s.is_paused(), s.auto_resume_at()), (false, None));
        s.pause(10_000, Some(20_000));
        s.pause(11_000, None);
        assert_eq!(s.auto_resume_at(), None, "an enable without auto_resume clears it");
        s.pause(12_000, Some(30_000));
        assert!(s.resume());
        assert!(!s.resume_if_due(40_000), "a resume cancels it");
    }

    #[test]
    fn inflight_and_held_sums_and_waiters() {
        let sh = new_shared();
        let i = sh.register("a").expect("room"); // ok: test
        sh.claim_slot(1, 11);
        sh.claim_slot(2, 12);
        sh.set_inflight(1, i, 4);
        sh.set_inflight(2, i, 1);
        sh.set_held(2, i, 7, 100);
        assert_eq!(sh.inflight(i, |_| true), 5);
        assert_eq!(sh.inflight(i, |pid| pid != 11), 1);
        assert_eq!(sh.held_now(i), 7);
        assert_eq!(sh.status(i, |_| true).inflight, 5);
        let s = sh.scope(i);
        assert!(!s.has_waiters());
        s.count_waiter(true);
        assert!(s.has_waiters());
        s.count_waiter(false);
        s.count_waiter(false);
        assert!(!s.has_waiters(), "never below zero");
    }

    #[test]
    fn a_resume_counts_only_the_requests_of_the_pause_it_ends() {
        let sh = new_shared();
        let i = sh.register("a").expect("room"); // ok: test
        sh.claim_slot(0, 10);
        sh.claim_slot(1, 11);
        // Slot 1 still holds 2 requests of epoch 0, which a resume already released.
        sh.set_newest(0, i, 1, 3);
        sh.set_newest(1, i, 0, 2);
        assert_eq!(sh.held_in_epoch(i, 1, |_| true), 3);
        assert_eq!(sh.held_in_epoch(i, 0, |_| true), 2);
        assert_eq!(sh.held_in_epoch(i, 1, |pid| pid != 10), 0);
    }

    #[test]
    fn hold_times_fall_in_their_buckets() {
        let sh = new_shared();
        let i = sh.register("a").expect("room"); // ok: test
        let s = sh.scope(i);
        for ms in [0, 10, 11, 999_999] {
            s.observe_hold(ms);
        }
        let st = sh.status(i, |_| true);
        assert_eq!(st.hold_buckets[0], 2, "0 and 10 ms are <= 10 ms");
        assert_eq!(st.hold_buckets[1], 1);
        assert_eq!(st.hold_buckets[HOLD_BUCKETS_MS.len()], 1, "+Inf");
        assert_eq!(st.hold_sum_ms, 1_000_020);
        s.count_timed_out();
        s.count_rejected();
        let st = sh.status(i, |_| true);
        assert_eq!((st.timed_out_total, st.rejected_total), (1, 1));
    }

    #[test]
    fn status_sums_live_slots_only() {
        let sh = new_shared();
        let i = sh.register("default").expect("room"); // ok: test
        sh.claim_slot(0, 100);
        sh.claim_slot(5, 105);
        sh.claim_slot(7, 107);
        sh.set_held(0, i, 3, 5000);
        sh.set_held(5, i, 2, 4000);
        sh.set_held(7, i, 9, 1000);
        let st = sh.status(i, |pid| pid != 107);
        assert_eq!((st.held, st.oldest_held_ms), (5, Some(4000)));
        // A respawned worker in slot 7 starts from zero.
        sh.claim_slot(7, 207);
        assert_eq!(sh.status(i, |_| true).held, 5);
        sh.leave_slot(5, 105);
        assert_eq!(sh.status(i, |_| true).held, 3);
        // Out-of-range slots are ignored rather than trusted.
        sh.set_held(MAX_SLOTS, i, 1, 1);
        sh.claim_slot(MAX_SLOTS + 1, 1);
    }

    #[test]
    fn counters_add_up() {
        let sh = new_shared();
        let s = sh.scope(sh.register("a").expect("room")); // ok: test
        s.count_held();
        s.count_held();
        s.count_released(1);
        s.count_aborted();
        let st = sh.status(0, |_| true);
        assert_eq!((st.held_total, st.released_total, st.aborted_total), (2, 1, 1));
        assert_eq!((sh.next_arrival(), sh.next_arrival()), (1, 2));
    }
}
