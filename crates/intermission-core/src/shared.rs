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
const MAGIC: u64 = 0x4e47_5849_4e54_0001;

#[repr(C)]
pub struct Shared {
    magic: AtomicU64,
    arrivals: AtomicU64,
    nscopes: AtomicU32,
    scopes: [Scope; MAX_SCOPES],
    slots: [Slot; MAX_SLOTS],
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
    held_total: AtomicU64,
    released_total: AtomicU64,
    aborted_total: AtomicU64,
}

#[repr(C)]
struct Slot {
    pid: AtomicI64,
    scopes: [SlotScope; MAX_SCOPES],
}

/// One worker's gauges for one scope; only that worker writes them.
#[repr(C)]
struct SlotScope {
    held: AtomicU32,
    /// Reserved for in-flight counts.
    inflight: AtomicU32,
    /// Unix ms at which this worker's oldest held request arrived, 0 if none.
    oldest_ms: AtomicU64,
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
    pub held_total: u64,
    pub released_total: u64,
    pub aborted_total: u64,
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
        let Some(s) = self.slots.get(slot) else { return };
        s.pid.store(0, SeqCst);
        for g in &s.scopes {
            g.held.store(0, Relaxed);
            g.inflight.store(0, Relaxed);
            g.oldest_ms.store(0, Relaxed);
        }
        s.pid.store(pid, SeqCst);
    }

    /// A worker that exits cleanly gives its slot back.
    pub fn leave_slot(&self, slot: usize, pid: i64) {
        if let Some(s) = self.slots.get(slot) {
            let _ = s.pid.compare_exchange(pid, 0, SeqCst, SeqCst);
        }
    }

    /// Sets a worker's gauges for one scope: how many it holds and since when (unix ms).
    pub fn set_held(&self, slot: usize, scope: usize, held: u32, oldest_ms: u64) {
        let Some(g) = self.slots.get(slot).and_then(|s| s.scopes.get(scope)) else { return };
        g.held.store(held, Relaxed);
        g.oldest_ms.store(oldest_ms, Relaxed);
    }

    /// The status of one scope. `alive(pid)` tells whether a worker still runs: the gauges of
    /// one that died are not counted.
    pub fn status(&self, i: usize, alive: impl Fn(i64) -> bool) -> ScopeStatus {
        let scope = self.scope(i);
        let (mut held, mut oldest) = (0u64, None::<u64>);
        for s in &self.slots {
            let pid = s.pid.load(SeqCst);
            if pid == 0 || !alive(pid) {
                continue;
            }
            let g = &s.scopes[i.min(MAX_SCOPES - 1)];
            let h = g.held.load(Relaxed);
            if h > 0 {
                held += u64::from(h);
                let o = g.oldest_ms.load(Relaxed);
                if o != 0 {
                    oldest = Some(oldest.map_or(o, |x| x.min(o)));
                }
            }
        }
        let paused_since_ms = scope.paused_since_ms.load(SeqCst);
        ScopeStatus {
            name: scope.name(),
            paused: scope.is_paused(),
            paused_since_ms,
            held,
            oldest_held_ms: oldest,
            held_total: scope.held_total.load(Relaxed),
            released_total: scope.released_total.load(Relaxed),
            aborted_total: scope.aborted_total.load(Relaxed),
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

    /// Pauses; false if it was paused already. Callers serialize pause and resume.
    pub fn pause(&self, now_ms: u64) -> bool {
        if self.paused.swap(1, SeqCst) != 0 {
            return false;
        }
        self.paused_since_ms.store(now_ms.max(1), SeqCst);
        true
    }

    /// Resumes; false if it was not paused. Callers serialize pause and resume.
    pub fn resume(&self) -> bool {
        if self.paused.swap(0, SeqCst) == 0 {
            return false;
        }
        self.paused_since_ms.store(0, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        true
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
        assert!(s.pause(1000));
        assert!(!s.pause(2000));
        assert_eq!(s.hold_epoch(), Some(0));
        assert_eq!(sh.status(0, |_| true).paused_since_ms, 1000);
        assert!(s.resume());
        assert!(!s.resume());
        assert_eq!(s.epoch(), 1);
        assert_eq!(s.hold_epoch(), None);
        assert!(s.pause(3000));
        assert_eq!(s.hold_epoch(), Some(1));
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
