//! The state every worker sees: one block of atomics in an nginx shared zone.
//!
//! No pointer is stored here (it would dangle in another process or after a reload), only
//! numbers and fixed-size names, so the block is valid wherever it is mapped. All-zero
//! bytes are a valid, empty state; the module zeroes the block once when it creates it.
//!
//! Scopes are registered by the master process while it reads a configuration. A scope's
//! entry is reused for another name only once nothing can refer to it any more: no live
//! process's configuration names it, the previous configuration did not name it, it is not
//! paused and nothing is held or in flight in it. So a worker of an older configuration keeps
//! reading the same index, and the table's limit is on scopes in use, not on names ever seen.
//!
//! Every figure a process owns (held, in flight, drain waiters, its oldest held request)
//! lives in that process's slot, and counts only while that process lives: readers skip
//! slots whose process is gone, and [`Shared::reap`] clears them.
//!
//! Pause, resume, registration, slot claims, reaping and the release pace must be serialized
//! by the caller (the module holds the zone's mutex); the request path only reads.

use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering::*};

use crate::scope_name;

/// Scopes one configuration can name.
pub const MAX_SCOPES: usize = 64;
/// Scopes the shared table holds: those of the configuration being loaded plus those an
/// older configuration's workers still use, which a reload may not take over.
pub const TABLE_SCOPES: usize = 2 * MAX_SCOPES;
const MASK_WORDS: usize = TABLE_SCOPES / 64;
/// nginx's `NGX_MAX_PROCESSES`: process slots are indexes below it.
pub const MAX_SLOTS: usize = 1024;
/// Marks an initialized block and its layout version.
const MAGIC: u64 = 0x4e47_5849_4e54_0008;

/// The turns a windowed release starts with (`Scope::window_now`).
pub const RAMP_START: u64 = 4;
/// Upper bounds of the hold-time histogram's buckets, in ms (then +Inf).
pub const HOLD_BUCKETS_MS: [u64; 12] =
    [10, 50, 100, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 300_000];

/// A set of scopes (indexes in the table).
pub type Mask = [u64; MASK_WORDS];

#[repr(C)]
pub struct Shared {
    magic: AtomicU64,
    arrivals: AtomicU64,
    /// Entries of the table ever used: a high-water mark.
    nscopes: AtomicU32,
    /// Tells this zone (one nginx generation) from another's, e.g. in the state file.
    generation: AtomicU64,
    /// Configurations nginx committed with this zone (its start, then each reload): a
    /// worker that sees a later one than its own is shutting down for a reload.
    configs: AtomicU64,
    /// Set when a worker of the newest configuration stops for real: the workers reloads
    /// left behind, still holding, stop holding too.
    stopping: AtomicU32,
    /// The state file as this generation last wrote or applied it: (inode, mtime s, ns).
    file_seen: [AtomicU64; 3],
    /// The scopes of the configuration registered last.
    last_conf: [AtomicU64; MASK_WORDS],
    scopes: [Scope; TABLE_SCOPES],
    /// The process in each slot, 0 if none: contiguous, so that summing the live workers'
    /// gauges on the request path reads a few cache lines, not one per slot.
    pids: [AtomicI64; MAX_SLOTS],
    /// The scopes each slot's process has in its configuration.
    uses: [[AtomicU64; MASK_WORDS]; MAX_SLOTS],
    gauges: [[SlotScope; TABLE_SCOPES]; MAX_SLOTS],
    /// Each slot's oldest in-flight requests that a drain waits for (see [`Blocker`]),
    /// written by its process and read under the zone's mutex.
    blockers: [[BlockerSlot; BLOCKERS_PER_SLOT]; MAX_SLOTS],
}

/// In-flight requests each process publishes as what blocks a drain: its oldest.
pub const BLOCKERS_PER_SLOT: usize = 8;
/// Bytes of a blocker's method and path that are kept.
pub const BLOCKER_METHOD_LEN: usize = 8;
pub const BLOCKER_PATH_LEN: usize = 56;

/// A published blocker: scope index + 1 (0: none), start, method and path bytes (each
/// byte string NUL-padded, in words so that the block stays plain atomics).
#[repr(C)]
struct BlockerSlot {
    scope: AtomicU64,
    since_ms: AtomicU64,
    method: AtomicU64,
    path: [AtomicU64; BLOCKER_PATH_LEN / 8],
}

/// An in-flight request that keeps a drain from finishing, as a control answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub scope: usize,
    /// Unix ms at which it was passed on.
    pub since_ms: u64,
    pub method: String,
    /// The request's path as the client sent it, without the query, perhaps cut short.
    pub path: String,
    pub pid: i64,
}

/// One in-flight request as its process publishes it.
#[derive(Debug, Clone, Copy)]
pub struct BlockerEntry<'a> {
    pub scope: usize,
    pub since_ms: u64,
    pub method: &'a [u8],
    pub path: &'a [u8],
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
    held_total: AtomicU64,
    released_total: AtomicU64,
    aborted_total: AtomicU64,
    timed_out_total: AtomicU64,
    rejected_total: AtomicU64,
    hold_buckets: [AtomicU64; HOLD_BUCKETS_MS.len() + 1],
    hold_sum_ms: AtomicU64,
    /// Drain waiters over all slots (the sum of the slots' `waiters`, kept as one figure so
    /// that the request path reads one word): a worker whose in-flight count drops to zero
    /// wakes the others only when somebody waits. A dead process's share is taken off when
    /// its slot is reaped.
    waiters_total: AtomicU32,
    /// Held requests over all slots, kept as one figure as `waiters_total` is: the request
    /// path of a windowed release asks whether anything is held at all with one load.
    held_sum: AtomicU64,
    /// The instance-wide release pace (`intermission_release_rate`): tokens (an f64's bits),
    /// when they were last refilled (ms of the caller's monotonic clock), and whether a
    /// release is under way (a release starts with a full bucket).
    tokens: AtomicU64,
    refilled_ms: AtomicU64,
    pacing: AtomicU32,
    /// The release window's slow start: turns that ended since the release began. A release
    /// lets `RAMP_START` go at first and one more for each that ends, up to its window.
    ramp_ended: AtomicU64,
    /// Hold on failure (`intermission_on_failure hold`): the scope is down (a readiness
    /// check failed: new requests are held without trying the backend), since when, and the
    /// status nginx would have answered (502, 504).
    down: AtomicU32,
    down_since_ms: AtomicU64,
    fail_status: AtomicU32,
    /// Requests are held because of a failure (down, or not yet confirmed): the next answer
    /// from the backend releases them.
    failing: AtomicU32,
    /// The one readiness check in flight over the instance: until when its lease runs (unix
    /// ms, 0: none), and when the next may start.
    check_until_ms: AtomicU64,
    next_check_ms: AtomicU64,
    failed_total: AtomicU64,
    retried_total: AtomicU64,
    gave_up_total: AtomicU64,
    went_down_total: AtomicU64,
    checks_total: AtomicU64,
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
    /// The arrival number and epoch of this worker's oldest held request (0: none): a paced
    /// release gives its tokens to the oldest held requests over all workers.
    head_arrival: AtomicU64,
    head_epoch: AtomicU64,
    /// Drain waiters of this process for this scope.
    waiters: AtomicU32,
    /// Connections that switched protocols (101, WebSocket): in flight, not waited for.
    upgraded: AtomicU32,
    /// Requests of `intermission_drain off` locations (streams): in flight, not waited for.
    streams: AtomicU32,
    /// Released requests of this process whose response has not ended yet: the turns of
    /// the release window (`intermission_release_window`) it uses.
    turns: AtomicU32,
}

/// What a request in flight is to a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A drain waits for it.
    Waited = 0,
    /// A stream of an `intermission_drain off` location.
    Stream = 1,
    /// A connection that switched protocols.
    Upgraded = 2,
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
    pub upgraded: u64,
    pub streams: u64,
    /// What blocks a drain: filled in by the caller that reads them under the mutex.
    pub blockers: Vec<Blocker>,
    /// Unix ms at which the scope resumes by itself.
    pub auto_resume_at_ms: Option<u64>,
    pub held_total: u64,
    pub released_total: u64,
    pub aborted_total: u64,
    pub timed_out_total: u64,
    pub rejected_total: u64,
    pub down: bool,
    /// Unix ms at which it went down; 0 while up.
    pub down_since_ms: u64,
    /// The status nginx would have answered for the last failure (0: none yet).
    pub fail_status: u32,
    pub failed_total: u64,
    pub retried_total: u64,
    pub gave_up_total: u64,
    pub went_down_total: u64,
    pub checks_total: u64,
    /// Hold times: a count per bucket of [`HOLD_BUCKETS_MS`] then +Inf (not cumulative).
    pub hold_buckets: [u64; HOLD_BUCKETS_MS.len() + 1],
    pub hold_sum_ms: u64,
}

impl Shared {
    /// Bytes the shared zone must hold for this block.
    pub const SIZE: usize = core::mem::size_of::<Shared>();

    /// Marks a zeroed block as initialized, with an id for this nginx generation.
    pub fn init(&self, generation: u64) {
        self.generation.store(generation.max(1), SeqCst);
        self.magic.store(MAGIC, SeqCst);
    }

    /// Whether the block was initialized by this layout version.
    pub fn is_initialized(&self) -> bool {
        self.magic.load(SeqCst) == MAGIC
    }

    /// This zone's generation id.
    pub fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// A configuration was committed with this zone (a start, a reload): returns its number.
    /// nginx is running again, so a stop seen before no longer holds.
    pub fn commit_config(&self) -> u64 {
        self.stopping.store(0, SeqCst);
        self.configs.fetch_add(1, SeqCst) + 1
    }

    /// The number of the configuration committed last.
    pub fn configs(&self) -> u64 {
        self.configs.load(SeqCst)
    }

    /// A worker of the newest configuration stops for real (not for a reload or an upgrade).
    pub fn set_stopping(&self) {
        self.stopping.store(1, SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(SeqCst) != 0
    }

    /// The state file's version this generation last wrote or applied.
    pub fn file_seen(&self) -> (u64, u64, u64) {
        let [a, b, c] = &self.file_seen;
        (a.load(SeqCst), b.load(SeqCst), c.load(SeqCst))
    }

    pub fn set_file_seen(&self, v: (u64, u64, u64)) {
        self.file_seen[0].store(v.0, SeqCst);
        self.file_seen[1].store(v.1, SeqCst);
        self.file_seen[2].store(v.2, SeqCst);
    }

    /// Registers a configuration's scopes, in order, and returns their indexes. A name the
    /// table has keeps its index; a new one takes an entry that was never used, or one that
    /// nothing refers to any more (see the module doc). Called by the master, serialized.
    pub fn register_config(
        &self,
        names: &[&str],
        alive: impl Fn(i64) -> bool,
    ) -> Result<Vec<usize>, String> {
        let mut out = Vec::with_capacity(names.len());
        let mut taken: Mask = [0; MASK_WORDS];
        let mut used = self.live_uses(&alive);
        for (w, l) in used.iter_mut().zip(&self.last_conf) {
            *w |= l.load(SeqCst);
        }
        for name in names {
            if let Some(i) = self.find(name) {
                set_bit(&mut taken, i);
                out.push(i);
                continue;
            }
            out.push(usize::MAX);
        }
        for (k, name) in names.iter().enumerate() {
            if out[k] != usize::MAX {
                continue;
            }
            let free = (0..TABLE_SCOPES).find(|&i| {
                !has_bit(&taken, i)
                    && (!self.scopes[i].is_named() || self.reusable(i, &used, &alive))
            });
            let Some(i) = free else {
                let busy: Vec<String> = (0..TABLE_SCOPES)
                    .filter(|&i| self.scopes[i].is_named() && !has_bit(&taken, i))
                    .map(|i| self.scopes[i].name())
                    .take(8)
                    .collect();
                return Err(format!(
                    "no room for scope \"{name}\": the table has {TABLE_SCOPES} entries, and \
                     those of other scopes are still in use (paused, holding, in flight, or \
                     named by the configuration of running workers: {}...)",
                    busy.join(", ")
                ));
            };
            set_bit(&mut taken, i);
            out[k] = i;
        }
        // Only now that every name has its entry: a refused configuration changes nothing.
        for (name, &i) in names.iter().zip(&out) {
            if self.find(name) != Some(i) {
                self.scopes[i].reset(name);
                if i >= self.nscopes.load(SeqCst) as usize {
                    self.nscopes.store(i as u32 + 1, SeqCst);
                }
            }
        }
        for (dst, w) in self.last_conf.iter().zip(taken) {
            dst.store(w, SeqCst);
        }
        Ok(out)
    }

    /// Whether entry `i` may take another name: no configuration in `used` names it, it is
    /// not paused, and nothing is held or in flight in it in a live process.
    fn reusable(&self, i: usize, used: &Mask, alive: &impl Fn(i64) -> bool) -> bool {
        if has_bit(used, i) || self.scopes[i].is_paused() {
            return false;
        }
        self.live_slots(alive).all(|s| {
            let g = &self.gauges[s][i];
            g.held.load(Relaxed) == 0 && g.in_flight_all() == 0
        })
    }

    /// The scopes named by the configurations of live processes.
    fn live_uses(&self, alive: &impl Fn(i64) -> bool) -> Mask {
        let mut m: Mask = [0; MASK_WORDS];
        for s in self.live_slots(alive) {
            for (w, u) in m.iter_mut().zip(&self.uses[s]) {
                *w |= u.load(SeqCst);
            }
        }
        m
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        let n = self.nscopes.load(SeqCst) as usize;
        (0..n.min(TABLE_SCOPES))
            .find(|&i| self.scopes[i].is_named() && self.scopes[i].name() == name)
    }

    /// The named entries of the table.
    pub fn named(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.nscopes.load(SeqCst) as usize;
        (0..n.min(TABLE_SCOPES)).filter(|&i| self.scopes[i].is_named())
    }

    /// Whether scope `i` matters beyond the configuration: paused, or anything held or in
    /// flight in it in a live process.
    pub fn in_use(&self, i: usize, alive: impl Fn(i64) -> bool) -> bool {
        let i = i.min(TABLE_SCOPES - 1);
        self.scopes[i].is_paused()
            || self.live_slots(alive).any(|s| {
                let g = &self.gauges[s][i];
                g.held.load(Relaxed) != 0 || g.in_flight_all() != 0
            })
    }

    /// The scope at an index [`Shared::register_config`] returned.
    pub fn scope(&self, i: usize) -> &Scope {
        &self.scopes[i.min(TABLE_SCOPES - 1)]
    }

    /// A number for every held request, increasing over all workers: it orders arrivals.
    pub fn next_arrival(&self) -> u64 {
        self.arrivals.fetch_add(1, Relaxed) + 1
    }

    /// A process starting in `slot` clears what a dead predecessor left there, then claims
    /// it with the scopes its configuration names. Serialized with [`Shared::reap`].
    pub fn claim_slot(&self, slot: usize, pid: i64, uses: &[usize]) {
        let Some(p) = self.pids.get(slot) else { return };
        p.store(0, SeqCst);
        self.clear_slot(slot);
        let mut m: Mask = [0; MASK_WORDS];
        for &i in uses {
            set_bit(&mut m, i);
        }
        for (dst, w) in self.uses[slot].iter().zip(m) {
            dst.store(w, SeqCst);
        }
        p.store(pid, SeqCst);
    }

    fn clear_slot(&self, slot: usize) {
        for (g, scope) in self.gauges[slot].iter().zip(&self.scopes) {
            let w = g.waiters.swap(0, SeqCst);
            if w != 0 {
                let _ =
                    scope.waiters_total.fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(w)));
            }
            let h = g.held.swap(0, SeqCst);
            if h != 0 {
                let _ = scope
                    .held_sum
                    .fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(u64::from(h))));
            }
            g.inflight.store(0, Relaxed);
            g.upgraded.store(0, Relaxed);
            g.streams.store(0, Relaxed);
            g.turns.store(0, Relaxed);
            g.oldest_ms.store(0, Relaxed);
            g.newest.store(0, Relaxed);
            g.head_arrival.store(0, Relaxed);
            g.head_epoch.store(0, Relaxed);
        }
        for u in &self.uses[slot] {
            u.store(0, SeqCst);
        }
        for b in &self.blockers[slot] {
            b.scope.store(0, Relaxed);
        }
    }

    /// A process that exits cleanly gives its slot back, with its figures.
    pub fn leave_slot(&self, slot: usize, pid: i64) {
        if let Some(p) = self.pids.get(slot) {
            if p.load(SeqCst) == pid {
                self.clear_slot(slot);
                p.store(0, SeqCst);
            }
        }
    }

    /// Clears the slots of processes that died without leaving them (SIGKILL, a crash, an
    /// old worker that nobody respawns): their figures stop counting. Returns how many.
    /// Serialized with [`Shared::claim_slot`].
    pub fn reap(&self, alive: impl Fn(i64) -> bool) -> usize {
        let mut n = 0;
        for s in 0..MAX_SLOTS {
            let pid = self.pids[s].load(SeqCst);
            if pid != 0 && !alive(pid) {
                self.clear_slot(s);
                self.pids[s].store(0, SeqCst);
                n += 1;
            }
        }
        n
    }

    fn gauge(&self, slot: usize, scope: usize) -> Option<&SlotScope> {
        self.gauges.get(slot).and_then(|g| g.get(scope))
    }

    /// Sets a worker's gauges for one scope: how many it holds and since when (unix ms), and
    /// the arrival number and epoch of the oldest (0 if none).
    pub fn set_held(&self, slot: usize, scope: usize, held: u32, oldest_ms: u64, head: (u64, u64)) {
        let Some(g) = self.gauge(slot, scope) else { return };
        let old = g.held.swap(held, SeqCst);
        let sum = &self.scopes[scope].held_sum;
        if held > old {
            sum.fetch_add(u64::from(held - old), SeqCst);
        } else if old > held {
            let _ =
                sum.fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(u64::from(old - held))));
        }
        g.oldest_ms.store(oldest_ms, Relaxed);
        g.head_epoch.store(head.1, Relaxed);
        g.head_arrival.store(head.0, SeqCst);
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
        let scope = scope.min(TABLE_SCOPES - 1);
        self.live_slots(alive)
            .map(|s| self.gauges[s][scope].newest.load(Relaxed))
            .filter(|v| v >> 32 == epoch & 0xffff_ffff)
            .map(|v| v & 0xffff_ffff)
            .sum()
    }

    /// Sets a worker's count of one kind of in-flight requests for one scope.
    pub fn set_inflight(&self, slot: usize, scope: usize, kind: Kind, n: u32) {
        if let Some(g) = self.gauge(slot, scope) {
            match kind {
                Kind::Waited => g.inflight.store(n, Relaxed),
                Kind::Stream => g.streams.store(n, Relaxed),
                Kind::Upgraded => g.upgraded.store(n, Relaxed),
            }
        }
    }

    /// Publishes a process's oldest in-flight requests (at most [`BLOCKERS_PER_SLOT`], the
    /// rest are dropped). Serialized with [`Shared::blockers`] (the zone's mutex).
    pub fn set_blockers(&self, slot: usize, entries: &[BlockerEntry<'_>]) {
        let Some(out) = self.blockers.get(slot) else { return };
        for (k, b) in out.iter().enumerate() {
            let Some(e) = entries.get(k) else {
                b.scope.store(0, Relaxed);
                continue;
            };
            b.scope.store(e.scope.min(TABLE_SCOPES - 1) as u64 + 1, Relaxed);
            b.since_ms.store(e.since_ms, Relaxed);
            b.method.store(pack(e.method, BLOCKER_METHOD_LEN)[0], Relaxed);
            for (dst, w) in b.path.iter().zip(pack(e.path, BLOCKER_PATH_LEN)) {
                dst.store(w, Relaxed);
            }
        }
    }

    /// The oldest published in-flight requests of a scope over the live processes, oldest
    /// first, at most `max`. Serialized with [`Shared::set_blockers`].
    pub fn blockers(&self, scope: usize, max: usize, alive: impl Fn(i64) -> bool) -> Vec<Blocker> {
        let want = scope.min(TABLE_SCOPES - 1) as u64 + 1;
        let mut out: Vec<Blocker> = Vec::new();
        for s in self.live_slots(alive) {
            // A list is up to a publication old: none of it stands once nothing is in flight.
            if self.gauges[s][scope.min(TABLE_SCOPES - 1)].inflight.load(Relaxed) == 0 {
                continue;
            }
            let pid = self.pids[s].load(SeqCst);
            for b in self.blockers[s].iter().filter(|b| b.scope.load(Relaxed) == want) {
                let path: Vec<u64> = b.path.iter().map(|w| w.load(Relaxed)).collect();
                out.push(Blocker {
                    scope,
                    since_ms: b.since_ms.load(Relaxed),
                    method: unpack(&[b.method.load(Relaxed)]),
                    path: unpack(&path),
                    pid,
                });
            }
        }
        out.sort_by_key(|b| (b.since_ms, b.pid));
        out.truncate(max);
        out
    }

    /// Sets a worker's number of drain waiters for one scope.
    pub fn set_waiters(&self, slot: usize, scope: usize, waiters: u32) {
        let Some(g) = self.gauge(slot, scope) else { return };
        let old = g.waiters.swap(waiters, SeqCst);
        let total = &self.scopes[scope].waiters_total;
        if waiters > old {
            total.fetch_add(waiters - old, SeqCst);
        } else if old > waiters {
            let _ = total.fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(old - waiters)));
        }
    }

    /// Whether a process other than the one in `me` has drain waiters for this scope: one
    /// load while nobody else waits, which is the request path's case.
    pub fn others_wait(&self, scope: usize, me: usize) -> bool {
        let scope = scope.min(TABLE_SCOPES - 1);
        let total = self.scopes[scope].waiters_total.load(SeqCst);
        total != 0 && total > self.gauge(me, scope).map_or(0, |g| g.waiters.load(SeqCst))
    }

    /// The pids of the other processes that have drain waiters for this scope.
    pub fn waiting_pids(&self, scope: usize, me: usize) -> impl Iterator<Item = i64> + '_ {
        let scope = scope.min(TABLE_SCOPES - 1);
        (0..MAX_SLOTS)
            .filter(move |&s| s != me)
            .map(|s| (s, self.pids[s].load(SeqCst)))
            .filter(move |&(s, pid)| pid != 0 && self.gauges[s][scope].waiters.load(SeqCst) != 0)
            .map(|(_, pid)| pid)
    }

    /// Whether any process holds a request of the scope: one load.
    pub fn has_held(&self, scope: usize) -> bool {
        self.scopes[scope.min(TABLE_SCOPES - 1)].held_sum.load(SeqCst) != 0
    }

    /// Held requests of a scope over the workers that have a slot, without checking that
    /// they still run: cheap enough for the request path. A caller about to act on a high
    /// figure reaps first ([`Shared::reap`]) and asks again.
    pub fn held_now(&self, scope: usize) -> u64 {
        let scope = scope.min(TABLE_SCOPES - 1);
        (0..MAX_SLOTS)
            .filter(|&s| self.pids[s].load(Relaxed) != 0)
            .map(|s| u64::from(self.gauges[s][scope].held.load(Relaxed)))
            .sum()
    }

    /// In-flight requests of a scope over the live workers.
    pub fn inflight(&self, scope: usize, alive: impl Fn(i64) -> bool) -> u64 {
        let scope = scope.min(TABLE_SCOPES - 1);
        self.live_slots(alive)
            .map(|s| u64::from(self.gauges[s][scope].inflight.load(Relaxed)))
            .sum()
    }

    /// Sets how many turns of a scope's release window a worker uses.
    pub fn set_turns(&self, slot: usize, scope: usize, n: u32) {
        if let Some(g) = self.gauge(slot, scope) {
            g.turns.store(n, SeqCst);
        }
    }

    /// The turns of a scope's release window in use over the live workers (the old ones of
    /// a reload included). Serialized with the workers' claims (the zone's mutex).
    pub fn turns(&self, scope: usize, alive: impl Fn(i64) -> bool) -> u64 {
        let scope = scope.min(TABLE_SCOPES - 1);
        self.live_slots(alive).map(|s| u64::from(self.gauges[s][scope].turns.load(SeqCst))).sum()
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

    /// The oldest ready held request of a scope in the other live processes: its arrival
    /// number, or `u64::MAX` if there is none. A held request is ready once the scope's
    /// epoch has moved past the one it was held under. Serialized with [`Scope::take_tokens`].
    pub fn others_oldest(&self, scope: usize, me: usize, alive: impl Fn(i64) -> bool) -> u64 {
        let scope = scope.min(TABLE_SCOPES - 1);
        self.others_head(scope, me, self.scopes[scope].epoch(), alive)
    }

    /// The oldest held request of a scope in the other live processes, ready or not: its
    /// arrival number, or `u64::MAX`. A readiness check sends the oldest over the instance.
    pub fn others_oldest_held(&self, scope: usize, me: usize, alive: impl Fn(i64) -> bool) -> u64 {
        self.others_head(scope.min(TABLE_SCOPES - 1), me, u64::MAX, alive)
    }

    /// The least arrival number of the other live processes' oldest held requests of a
    /// scope that were held under an epoch before `epoch`.
    fn others_head(&self, scope: usize, me: usize, epoch: u64, alive: impl Fn(i64) -> bool) -> u64 {
        (0..MAX_SLOTS)
            .filter(|&s| s != me)
            .filter_map(|s| {
                let g = &self.gauges[s][scope];
                let a = g.head_arrival.load(SeqCst);
                (a != 0 && g.head_epoch.load(Relaxed) < epoch).then_some((s, a))
            })
            .filter(|&(s, _)| {
                let pid = self.pids[s].load(SeqCst);
                pid != 0 && alive(pid)
            })
            .map(|(_, a)| a)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The status of one scope. `alive(pid)` tells whether a worker still runs: the gauges of
    /// one that died are not counted.
    pub fn status(&self, i: usize, alive: impl Fn(i64) -> bool) -> ScopeStatus {
        let i = i.min(TABLE_SCOPES - 1);
        let scope = self.scope(i);
        let (mut held, mut inflight, mut oldest) = (0u64, 0u64, None::<u64>);
        let (mut upgraded, mut streams) = (0u64, 0u64);
        for s in self.live_slots(alive) {
            let g = &self.gauges[s][i];
            inflight += u64::from(g.inflight.load(Relaxed));
            upgraded += u64::from(g.upgraded.load(Relaxed));
            streams += u64::from(g.streams.load(Relaxed));
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
            upgraded,
            streams,
            blockers: Vec::new(),
            auto_resume_at_ms: (auto != 0).then_some(auto),
            held_total: scope.held_total.load(Relaxed),
            released_total: scope.released_total.load(Relaxed),
            aborted_total: scope.aborted_total.load(Relaxed),
            timed_out_total: scope.timed_out_total.load(Relaxed),
            rejected_total: scope.rejected_total.load(Relaxed),
            down: scope.is_down(),
            down_since_ms: scope.down_since_ms.load(SeqCst),
            fail_status: scope.fail_status.load(Relaxed),
            failed_total: scope.failed_total.load(Relaxed),
            retried_total: scope.retried_total.load(Relaxed),
            gave_up_total: scope.gave_up_total.load(Relaxed),
            went_down_total: scope.went_down_total.load(Relaxed),
            checks_total: scope.checks_total.load(Relaxed),
            hold_buckets,
            hold_sum_ms: scope.hold_sum_ms.load(Relaxed),
        }
    }
}

impl SlotScope {
    /// In-flight requests of every kind.
    fn in_flight_all(&self) -> u32 {
        let n = self.inflight.load(Relaxed);
        n.saturating_add(self.upgraded.load(Relaxed)).saturating_add(self.streams.load(Relaxed))
    }
}

/// The first `len` bytes of `b`, NUL-padded, as little-endian words.
fn pack(b: &[u8], len: usize) -> Vec<u64> {
    let mut bytes = vec![0u8; len];
    for (dst, &c) in bytes.iter_mut().zip(b) {
        *dst = c;
    }
    bytes.chunks(8).map(|c| c.iter().rev().fold(0u64, |w, &x| w << 8 | u64::from(x))).collect()
}

/// The bytes of words `pack` made, up to the first NUL, as text.
fn unpack(words: &[u64]) -> String {
    let bytes: Vec<u8> =
        words.iter().flat_map(|w| w.to_le_bytes()).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn set_bit(m: &mut Mask, i: usize) {
    m[i / 64] |= 1 << (i % 64);
}

fn has_bit(m: &Mask, i: usize) -> bool {
    m[i / 64] & 1 << (i % 64) != 0
}

impl Scope {
    #[cfg(test)]
    fn status_counters(&self) -> (u64, u64) {
        (self.held_total.load(Relaxed), self.released_total.load(Relaxed))
    }

    /// Whether the entry has a name (is registered).
    fn is_named(&self) -> bool {
        self.name_len.load(Acquire) != 0
    }

    /// Gives an unused entry a new name, with the state and counters of a new scope. The
    /// epoch only moves forward, so that a stale held request can never look released.
    fn reset(&self, name: &str) {
        self.name_len.store(0, SeqCst);
        for (dst, &b) in self.name.iter().zip(name.as_bytes()) {
            dst.store(b, Relaxed);
        }
        self.paused.store(0, SeqCst);
        self.paused_since_ms.store(0, SeqCst);
        self.auto_resume_at_ms.store(0, SeqCst);
        for c in [
            &self.held_total,
            &self.released_total,
            &self.aborted_total,
            &self.timed_out_total,
            &self.rejected_total,
            &self.hold_sum_ms,
            &self.held_sum,
            &self.down_since_ms,
            &self.check_until_ms,
            &self.next_check_ms,
            &self.failed_total,
            &self.retried_total,
            &self.gave_up_total,
            &self.went_down_total,
            &self.checks_total,
        ] {
            c.store(0, Relaxed);
        }
        for b in &self.hold_buckets {
            b.store(0, Relaxed);
        }
        self.release_begins();
        self.down.store(0, SeqCst);
        self.failing.store(0, SeqCst);
        self.fail_status.store(0, SeqCst);
        // Publish the entry only once its name is complete.
        self.name_len.store(name.len().min(scope_name::MAX_LEN) as u32, Release);
    }

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
        (self.is_paused() || self.is_down()).then_some(epoch)
    }

    /// Whether a readiness check failed and the backend is not back yet.
    pub fn is_down(&self) -> bool {
        self.down.load(SeqCst) != 0
    }

    /// Unix ms at which the scope went down; 0 while up.
    pub fn down_since(&self) -> u64 {
        self.down_since_ms.load(SeqCst)
    }

    /// Whether released requests may go now: neither paused nor down.
    pub fn may_release(&self) -> bool {
        !self.is_paused() && !self.is_down()
    }

    /// A request is held because of a failure whose answer would have been `status`.
    /// `first`: its first failure (a request held again after a failed check counts once).
    /// The first failure of an episode sets when its first readiness check is due
    /// (`check_at`, unix ms): one failure alone waits for it, the scope is not down yet. A
    /// second request that fails before that check makes it due now (`now_ms`): an outage,
    /// most likely, whose every request would otherwise try the dead backend until then.
    pub fn count_failed(&self, status: u32, first: bool, now_ms: u64, check_at: u64) {
        if first {
            self.failed_total.fetch_add(1, Relaxed);
        }
        self.fail_status.store(status, Relaxed);
        if self.failing.swap(1, SeqCst) == 0 {
            if !self.is_down() {
                self.next_check_ms.store(check_at, SeqCst);
            }
        } else if first && !self.is_down() {
            self.next_check_ms.fetch_min(now_ms, SeqCst);
        }
    }

    /// The status nginx would answer for the scope's last failure (502 if none yet).
    pub fn failed_status(&self) -> u32 {
        match self.fail_status.load(Relaxed) {
            0 => 502,
            s => s,
        }
    }

    /// Whether requests are held because of a failure (or the scope is down): the request
    /// path's test, one load.
    pub fn is_failing(&self) -> bool {
        self.failing.load(SeqCst) != 0
    }

    /// A readiness check failed: the scope goes down. True if it was up. Callers serialize
    /// it (the zone's mutex).
    pub fn go_down(&self, now_ms: u64) -> bool {
        self.check_until_ms.store(0, SeqCst);
        self.failing.store(1, SeqCst);
        if self.down.swap(1, SeqCst) != 0 {
            return false;
        }
        self.down_since_ms.store(now_ms.max(1), SeqCst);
        self.went_down_total.fetch_add(1, Relaxed);
        true
    }

    /// A new zone (a start, or the new binary of an upgrade) takes the down state the state
    /// file recorded: down since `since_ms`, answering `status` at a deadline, with its first
    /// readiness check due at once (the backend may well be back). Not a new outage: the
    /// went-down counter does not move.
    pub fn restore_down(&self, since_ms: u64, status: u32) {
        self.fail_status.store(status, SeqCst);
        self.next_check_ms.store(0, SeqCst);
        self.check_until_ms.store(0, SeqCst);
        self.down_since_ms.store(since_ms.max(1), SeqCst);
        self.down.store(1, SeqCst);
        self.failing.store(1, SeqCst);
    }

    /// The backend answered: the scope is up, and the requests held because of a failure
    /// may go (the epoch moves on, unless a pause still holds them; the resume that ends
    /// it moves it). Returns the unix ms it went down at if it was down, 0 if it was only
    /// failing. Callers serialize it.
    pub fn come_up(&self) -> Option<u64> {
        if self.failing.swap(0, SeqCst) == 0 {
            return None;
        }
        self.check_until_ms.store(0, SeqCst);
        let was_down = self.down.swap(0, SeqCst) != 0;
        let since = self.down_since_ms.swap(0, SeqCst);
        if !self.is_paused() {
            self.release_begins();
            self.epoch.fetch_add(1, SeqCst);
        }
        Some(if was_down { since.max(1) } else { 0 })
    }

    /// Takes the instance's one readiness check if it is free and due: its lease runs for
    /// `lease_ms`, the next one is due `next_ms` after now. Callers serialize it.
    pub fn take_check(&self, now_ms: u64, lease_ms: u64, next_ms: u64) -> bool {
        let until = self.check_until_ms.load(SeqCst);
        if (until != 0 && until > now_ms) || self.next_check_ms.load(SeqCst) > now_ms {
            return false;
        }
        self.check_until_ms.store(now_ms + lease_ms, SeqCst);
        self.next_check_ms.store(now_ms + next_ms, SeqCst);
        self.checks_total.fetch_add(1, Relaxed);
        true
    }

    /// When the next readiness check may start (unix ms), if none is in flight at `now_ms`.
    pub fn check_due_ms(&self, now_ms: u64) -> Option<u64> {
        let until = self.check_until_ms.load(SeqCst);
        (until == 0 || until <= now_ms).then(|| self.next_check_ms.load(SeqCst))
    }

    /// The readiness check in flight ended without an answer either way (its client left).
    pub fn end_check(&self) {
        self.check_until_ms.store(0, SeqCst);
    }

    pub fn count_retried(&self) {
        self.retried_total.fetch_add(1, Relaxed);
    }

    pub fn count_gave_up(&self) {
        self.gave_up_total.fetch_add(1, Relaxed);
    }

    /// Pauses; false if it was paused already. A pause with a deadline (unix ms) sets it.
    /// One without keeps the deadline of a scope that was paused already: that is the
    /// dead-man switch of whoever paused it, which a pause of every scope must not clear.
    /// Callers serialize pause and resume.
    pub fn pause(&self, now_ms: u64, auto_resume_at_ms: Option<u64>) -> bool {
        let was_paused = self.is_paused();
        if auto_resume_at_ms.is_some() || !was_paused {
            self.set_auto_resume(auto_resume_at_ms);
        }
        if self.paused.swap(1, SeqCst) != 0 {
            return false;
        }
        self.paused_since_ms.store(now_ms.max(1), SeqCst);
        true
    }

    /// Sets, or with `None` clears, the auto-resume deadline (unix ms) of a paused scope:
    /// for a generation that follows another's state file, which says what the deadline is.
    /// Callers serialize it with pause and resume.
    pub fn set_auto_resume(&self, at_ms: Option<u64>) {
        self.auto_resume_at_ms.store(at_ms.unwrap_or(0), SeqCst);
    }

    /// Resumes; false if it was not paused. Callers serialize pause and resume.
    pub fn resume(&self) -> bool {
        self.auto_resume_at_ms.store(0, SeqCst);
        if self.paused.swap(0, SeqCst) == 0 {
            return false;
        }
        self.paused_since_ms.store(0, SeqCst);
        self.release_begins();
        self.epoch.fetch_add(1, SeqCst);
        true
    }

    /// The instance-wide release pace: refills the bucket at `per_ms` tokens a millisecond
    /// up to `burst` (a release starts with a full one) and takes up to `want` tokens.
    /// Returns how many it took and, if it took fewer than `want`, the milliseconds until
    /// the next token. `now_ms` is a monotonic clock every caller shares (the module uses
    /// `CLOCK_MONOTONIC`). Callers serialize it (the zone's mutex), like `limit_req`.
    pub fn take_tokens(&self, now_ms: u64, per_ms: f64, burst: f64, want: u64) -> (u64, u64) {
        // Never back: a caller whose clock reads a little behind the last one's refills
        // nothing, rather than setting the clock back for the next caller to count twice.
        let last = self.refilled_ms.load(SeqCst);
        let now_ms = now_ms.max(last);
        let mut tokens = if self.pacing.swap(1, SeqCst) == 0 {
            burst
        } else {
            let elapsed = (now_ms - last) as f64;
            (f64::from_bits(self.tokens.load(SeqCst)) + elapsed * per_ms).min(burst)
        };
        self.refilled_ms.store(now_ms, SeqCst);
        let took = (tokens.max(0.0) as u64).min(want);
        tokens -= took as f64;
        self.tokens.store(tokens.to_bits(), SeqCst);
        let wait = if took < want && per_ms > 0.0 {
            ((1.0 - tokens) / per_ms).ceil().max(1.0) as u64
        } else {
            0
        };
        (took, wait)
    }

    /// A release begins (a resume, a come-up, a new entry): with a full bucket for its pace,
    /// and a small window (`window_now`).
    fn release_begins(&self) {
        self.pacing.store(0, SeqCst);
        self.ramp_ended.store(0, SeqCst);
    }

    /// How many turns a release window of `window` has now: `RAMP_START` when the release
    /// begins, one more for each turn that ended since, up to `window` (TCP's slow start: it
    /// doubles with every round of answers). A backend that has just restarted gets a few
    /// requests first, and the first answers do not queue behind a whole window's.
    /// Callers serialize it with `turn_ended`.
    pub fn window_now(&self, window: u64) -> u64 {
        window.min(RAMP_START.saturating_add(self.ramp_ended.load(SeqCst)))
    }

    /// A released request's turn ended: the window grows by one, up to its size.
    pub fn turn_ended(&self) {
        self.ramp_ended.fetch_add(1, SeqCst);
    }

    /// Whether `take_tokens` would give a token at `now_ms`, without taking it. Callers
    /// serialize it with `take_tokens`.
    pub fn has_token(&self, now_ms: u64, per_ms: f64, burst: f64) -> bool {
        if self.pacing.load(SeqCst) == 0 {
            return burst >= 1.0;
        }
        let elapsed = now_ms.saturating_sub(self.refilled_ms.load(SeqCst)) as f64;
        (f64::from_bits(self.tokens.load(SeqCst)) + elapsed * per_ms).min(burst) >= 1.0
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
        shared.init(7);
        shared
    }

    /// Registers one more scope, keeping those registered before in the configuration.
    fn reg(sh: &Shared, name: &str) -> Result<usize, String> {
        let mut names: Vec<String> = sh.named().map(|i| sh.scope(i).name()).collect();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let idx = sh.register_config(&refs, |_| true)?;
        Ok(idx[refs.iter().position(|n| *n == name).unwrap_or(0)])
    }

    #[test]
    fn registers_scopes_once_and_finds_them() {
        let sh = new_shared();
        assert!(sh.is_initialized());
        assert_eq!(reg(&sh, "default"), Ok(0));
        assert_eq!(reg(&sh, "blue"), Ok(1));
        assert_eq!(reg(&sh, "default"), Ok(0));
        assert_eq!(sh.find("blue"), Some(1));
        assert_eq!(sh.find("green"), None);
        assert_eq!(sh.scope(1).name(), "blue");
    }

    #[test]
    fn reuses_entries_nothing_refers_to() {
        let sh = new_shared();
        let names = |p: &str| (0..MAX_SCOPES).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        let (s, t, u) = (names("s"), names("t"), names("u"));
        let go = |v: &Vec<String>, alive: &dyn Fn(i64) -> bool| {
            let r: Vec<&str> = v.iter().map(String::as_str).collect();
            sh.register_config(&r, alive)
        };
        let first = go(&s, &|_| true).expect("room"); // ok: test
        assert_eq!(first, (0..MAX_SCOPES).collect::<Vec<_>>());
        // A worker of the first configuration still runs.
        sh.claim_slot(3, 103, &first);
        let second = go(&t, &|_| true).expect("room"); // ok: test
        assert!(second.iter().all(|&i| i >= MAX_SCOPES), "s* are named by a live worker");
        // While it runs, and t* were the last configuration, nothing is free; a refused
        // configuration changes nothing.
        assert!(go(&u, &|_| true).is_err());
        assert_eq!(sh.find("s4"), Some(4));
        assert_eq!(sh.find("u0"), None);
        // Once it is gone, the s* entries take the new names; s5 is paused and stays, so
        // only 63 are free.
        sh.scope(5).pause(1, None);
        assert!(go(&u, &|pid| pid != 103).is_err());
        let u = u[..MAX_SCOPES - 1].to_vec();
        let third = go(&u, &|pid| pid != 103).expect("room"); // ok: test
        assert!(!third.contains(&5));
        assert_eq!(sh.find("s5"), Some(5));
        assert_eq!(sh.find("s4"), None, "reused");
        assert!(third.iter().all(|&i| i < MAX_SCOPES));
        assert_eq!(sh.scope(third[0]).status_counters(), (0, 0));
        // A name the table has keeps its index.
        assert_eq!(go(&vec!["s5".to_owned()], &|_| true), Ok(vec![5]));
    }

    #[test]
    fn configurations_are_numbered_and_a_new_one_ends_a_stop() {
        let sh = new_shared();
        assert_eq!(sh.configs(), 0);
        assert_eq!(sh.commit_config(), 1);
        assert!(!sh.is_stopping());
        sh.set_stopping();
        assert!(sh.is_stopping());
        assert_eq!(sh.commit_config(), 2);
        assert!(!sh.is_stopping(), "nginx runs again (WINCH, then HUP)");
        assert_eq!(sh.configs(), 2);
    }

    #[test]
    fn pause_and_resume_report_changes_and_move_the_epoch() {
        let sh = new_shared();
        let s = sh.scope(reg(&sh, "default").expect("room")); // ok: test
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
        let s = sh.scope(reg(&sh, "a").expect("room")); // ok: test
        assert!(s.pause(1000, Some(5000)));
        assert_eq!(s.auto_resume_at(), Some(5000));
        assert!(!s.pause(2000, Some(9000)), "a new enable on a paused scope");
        assert_eq!(s.auto_resume_at(), Some(9000));
        assert!(!s.resume_if_due(8999));
        assert!(s.resume_if_due(9000));
        assert!(!s.resume_if_due(9001), "fires once");
        assert_eq!((s.is_paused(), s.auto_resume_at()), (false, None));
        s.pause(12_000, Some(30_000));
        assert!(s.resume());
        assert!(!s.resume_if_due(40_000), "a resume cancels it");
    }

    #[test]
    fn an_enable_of_a_paused_scope_keeps_its_deadline_unless_it_sets_one() {
        let sh = new_shared();
        let s = sh.scope(reg(&sh, "vs05").expect("room")); // ok: test
        assert!(s.pause(10_000, Some(20_000)));
        assert!(!s.pause(11_000, None), "a pause of every scope, without auto_resume");
        assert_eq!(s.auto_resume_at(), Some(20_000), "keeps the deadline");
        assert_eq!(s.paused_since(), Some(10_000));
        assert!(!s.resume_if_due(19_999));
        assert!(s.resume_if_due(20_000), "and it still fires");
        assert!(s.pause(30_000, None));
        assert_eq!(s.auto_resume_at(), None, "a new pause without auto_resume has none");
        assert!(!s.pause(31_000, Some(40_000)));
        assert_eq!(s.auto_resume_at(), Some(40_000), "an enable with auto_resume sets it");
        s.set_auto_resume(None);
        assert_eq!((s.is_paused(), s.auto_resume_at()), (true, None), "followed from a file");
    }

    #[test]
    fn inflight_and_held_sums_and_waiters() {
        let sh = new_shared();
        let i = reg(&sh, "a").expect("room"); // ok: test
        sh.claim_slot(1, 11, &[i]);
        sh.claim_slot(2, 12, &[i]);
        sh.set_inflight(1, i, Kind::Waited, 4);
        sh.set_inflight(2, i, Kind::Waited, 1);
        sh.set_inflight(2, i, Kind::Upgraded, 3);
        sh.set_inflight(1, i, Kind::Stream, 2);
        sh.set_held(2, i, 7, 100, (0, 0));
        assert_eq!(sh.inflight(i, |_| true), 5);
        assert_eq!(sh.inflight(i, |pid| pid != 11), 1);
        assert_eq!(sh.held_now(i), 7);
        let st = sh.status(i, |_| true);
        assert_eq!((st.inflight, st.upgraded, st.streams), (5, 3, 2));
        sh.set_waiters(1, i, 1);
        assert_eq!(sh.waiting_pids(i, 2).collect::<Vec<_>>(), vec![11]);
        assert!(sh.others_wait(i, 2));
        assert!(!sh.others_wait(i, 1), "not my own");
        assert_eq!(sh.waiting_pids(i, 1).count(), 0, "not my own");
        assert_eq!(sh.reap(|pid| pid != 11), 1);
        assert_eq!(sh.waiting_pids(i, 2).count(), 0, "a dead process's waiter is reaped");
        assert!(!sh.others_wait(i, 2), "and no longer counted");
        assert_eq!(sh.inflight(i, |_| true), 1);
        assert_eq!(sh.held_now(i), 7);
        let st = sh.status(i, |_| true);
        assert_eq!((st.upgraded, st.streams), (3, 0), "a dead process's figures go");
    }

    #[test]
    fn down_and_up_compose_with_a_pause() {
        let sh = new_shared();
        let i = reg(&sh, "a").expect("room"); // ok: test
        let s = sh.scope(i);
        assert_eq!(s.hold_epoch(), None);
        s.count_failed(502, true, 0, 1_000);
        assert!(s.is_failing() && !s.is_down(), "one failure: not down yet");
        assert_eq!(s.hold_epoch(), None, "new requests still go");
        assert!(!s.take_check(900, 5_000, 1_000), "the first check waits an interval");
        s.count_failed(502, false, 950, 2_000);
        assert!(!s.take_check(960, 5_000, 1_000), "the same request again: still waits");
        s.count_failed(502, true, 970, 2_000);
        assert!(s.take_check(970, 5_000, 1_000), "a second request failed: the check is due");
        assert!(!s.take_check(1_500, 5_000, 1_000), "one at a time");
        assert!(s.go_down(1_600));
        assert!(!s.go_down(1_700), "once");
        assert_eq!(s.hold_epoch(), Some(s.epoch()), "down: new requests are held");
        assert!(!s.take_check(1_800, 5_000, 1_000), "not before the interval");
        assert!(s.take_check(2_000, 5_000, 1_000), "then the next");
        assert!(s.pause(2_100, None));
        assert!(!s.may_release());
        let e = s.epoch();
        assert!(s.resume());
        assert!(!s.may_release(), "a resume while down releases nothing");
        assert_eq!(s.come_up(), Some(1_600));
        assert!(s.may_release() && s.epoch() == e + 2, "up: released");
        assert_eq!(s.come_up(), None, "once");
        s.count_failed(504, true, 0, 0);
        assert!(s.pause(3_000, None));
        let e = s.epoch();
        assert_eq!(s.come_up(), Some(0), "up again, from failing only");
        assert_eq!(s.epoch(), e, "a pause still holds them: its resume moves the epoch");
        assert!(s.take_check(10_000, 100, 1_000));
        assert!(s.take_check(11_000, 100, 1_000), "a lease runs out");
        let st = sh.status(i, |_| true);
        assert_eq!((st.failed_total, st.went_down_total, st.checks_total), (3, 1, 4));
    }

    #[test]
    fn turns_count_over_live_slots_and_go_with_a_dead_one() {
        let sh = new_shared();
        let i = reg(&sh, "a").expect("room"); // ok: test
        sh.claim_slot(1, 100, &[i]);
        sh.claim_slot(2, 200, &[i]);
        assert!(!sh.has_held(i));
        sh.set_held(1, i, 2, 1, (1, 0));
        sh.set_held(2, i, 5, 1, (2, 0));
        sh.set_held(2, i, 3, 1, (2, 0));
        assert!(sh.has_held(i));
        sh.set_held(1, i, 0, 0, (0, 0));
        assert!(sh.has_held(i), "3 in slot 2");
        sh.set_turns(1, i, 3);
        sh.set_turns(2, i, 4);
        assert_eq!(sh.turns(i, |_| true), 7);
        assert_eq!(sh.turns(i, |pid| pid != 200), 3, "a dead process's turns do not count");
        assert_eq!(sh.reap(|pid| pid != 200), 1);
        assert_eq!(sh.turns(i, |_| true), 3, "reaped");
        assert!(!sh.has_held(i), "a reaped slot's held requests go from the sum");
        sh.leave_slot(1, 100);
        assert_eq!(sh.turns(i, |_| true), 0);
    }

    #[test]
    fn a_restored_down_state_holds_and_checks_at_once() {
        let sh = new_shared();
        let i = reg(&sh, "a").expect("room"); // ok: test
        let s = sh.scope(i);
        s.restore_down(1_234, 504);
        assert!(s.is_down() && s.is_failing());
        assert_eq!(s.hold_epoch(), Some(s.epoch()), "new requests are held");
        assert_eq!(s.failed_status(), 504);
        assert!(s.take_check(1, 5_000, 1_000), "the first check is due at once");
        let st = sh.status(i, |_| true);
        assert_eq!((st.down_since_ms, st.went_down_total), (1_234, 0), "not a new outage");
        assert_eq!(s.come_up(), Some(1_234));
    }

    #[test]
    fn blockers_oldest_first_over_live_slots() {
        let sh = new_shared();
        let a = reg(&sh, "a").expect("room"); // ok: test
        let b = reg(&sh, "b").expect("room"); // ok: test
        sh.claim_slot(1, 11, &[a, b]);
        sh.claim_slot(2, 12, &[a, b]);
        static LONG: [u8; 100] = [b'x'; 100];
        let e = |scope, since_ms, path: &'static [u8]| BlockerEntry {
            scope,
            since_ms,
            method: b"PROPFIND-LONG",
            path,
        };
        sh.set_blockers(1, &[e(a, 30, b"/one"), e(b, 10, b"/b")]);
        assert_eq!(sh.blockers(a, 10, |_| true), vec![], "nothing in flight");
        sh.set_inflight(1, a, Kind::Waited, 1);
        sh.set_inflight(2, a, Kind::Waited, 2);
        sh.set_blockers(2, &[e(a, 20, &LONG), e(a, 40, b"/two\xff")]);
        let got = sh.blockers(a, 10, |_| true);
        let paths: Vec<&str> = got.iter().map(|b| b.path.as_str()).collect();
        assert_eq!(paths[1..], ["/one", "/two\u{fffd}"]);
        assert_eq!(got[0].path.len(), BLOCKER_PATH_LEN, "cut short");
        assert_eq!((got[0].pid, got[0].method.as_str()), (12, "PROPFIND"));
        assert_eq!(sh.blockers(a, 2, |_| true).len(), 2, "bounded");
        assert_eq!(sh.blockers(a, 10, |pid| pid != 12).len(), 1, "live slots only");
        sh.set_blockers(1, &[]);
        assert_eq!(sh.blockers(b, 10, |_| true), vec![]);
        sh.set_blockers(2, &[e(a, 5, b"/x")]);
        assert_eq!(sh.blockers(a, 10, |_| true).len(), 1, "a new list replaces the old");
    }

    #[test]
    fn a_resume_counts_only_the_requests_of_the_pause_it_ends() {
        let sh = new_shared();
        let i = reg(&sh, "a").expect("room"); // ok: test
        sh.claim_slot(0, 10, &[i]);
        sh.claim_slot(1, 11, &[i]);
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
        let i = reg(&sh, "a").expect("room"); // ok: test
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
        let i = reg(&sh, "default").expect("room"); // ok: test
        sh.claim_slot(0, 100, &[i]);
        sh.claim_slot(5, 105, &[i]);
        sh.claim_slot(7, 107, &[i]);
        sh.set_held(0, i, 3, 5000, (0, 0));
        sh.set_held(5, i, 2, 4000, (0, 0));
        sh.set_held(7, i, 9, 1000, (0, 0));
        let st = sh.status(i, |pid| pid != 107);
        assert_eq!((st.held, st.oldest_held_ms), (5, Some(4000)));
        // A respawned worker in slot 7 starts from zero.
        sh.claim_slot(7, 207, &[i]);
        assert_eq!(sh.status(i, |_| true).held, 5);
        sh.leave_slot(5, 105);
        assert_eq!(sh.status(i, |_| true).held, 3);
        // Out-of-range slots are ignored rather than trusted.
        sh.set_held(MAX_SLOTS, i, 1, 1, (0, 0));
        sh.claim_slot(MAX_SLOTS + 1, 1, &[i]);
    }

    #[test]
    fn counters_add_up() {
        let sh = new_shared();
        let s = sh.scope(reg(&sh, "a").expect("room")); // ok: test
        s.count_held();
        s.count_held();
        s.count_released(1);
        s.count_aborted();
        let st = sh.status(0, |_| true);
        assert_eq!((st.held_total, st.released_total, st.aborted_total), (2, 1, 1));
        assert_eq!((sh.next_arrival(), sh.next_arrival()), (1, 2));
    }

    #[test]
    fn a_paced_release_is_one_bucket_and_goes_to_the_oldest() {
        let sh = new_shared();
        let i = reg(&sh, "a").expect("room"); // ok: test
        let s = sh.scope(i);
        sh.claim_slot(0, 10, &[i]);
        sh.claim_slot(1, 11, &[i]);
        s.pause(1, None);
        // Both workers hold requests of epoch 0; slot 1's oldest arrived first.
        sh.set_held(0, i, 4, 1, (5, 0));
        sh.set_held(1, i, 4, 1, (2, 0));
        assert_eq!(sh.others_oldest(i, 0, |_| true), u64::MAX, "not ready while paused");
        assert_eq!(sh.others_oldest_held(i, 0, |_| true), 2, "but held, ready or not");
        assert_eq!(sh.others_oldest_held(i, 0, |pid| pid != 11), u64::MAX, "by a live slot");
        assert_eq!(sh.others_oldest_held(i, 1, |_| true), 5);
        s.resume();
        assert_eq!(sh.others_oldest(i, 0, |_| true), 2);
        assert_eq!(sh.others_oldest(i, 0, |pid| pid != 11), u64::MAX, "dead slots do not count");
        assert_eq!(sh.others_oldest(i, 1, |_| true), 5);
        // 4 r/s (0.004 per ms), burst 2: two at once, then one every 250 ms, for everyone.
        assert_eq!(s.take_tokens(1000, 0.004, 2.0, 10), (2, 250));
        assert_eq!(s.take_tokens(1100, 0.004, 2.0, 1), (0, 150));
        assert_eq!(s.take_tokens(1250, 0.004, 2.0, 1), (1, 0));
        assert_eq!(s.take_tokens(1250, 0.004, 2.0, 1), (0, 250));
        assert!(!s.has_token(1250, 0.004, 2.0) && s.has_token(1500, 0.004, 2.0), "a peek");
        // A process whose clock reads behind refills nothing and does not set it back: the
        // next one does not count those 200 ms twice.
        assert_eq!(s.take_tokens(1050, 0.004, 2.0, 1), (0, 250));
        assert_eq!(s.take_tokens(1400, 0.004, 2.0, 1), (0, 100));
        assert_eq!(s.take_tokens(1500, 0.004, 2.0, 1), (1, 0));
        // A new resume starts with a full bucket again.
        s.pause(2, None);
        s.resume();
        assert_eq!(s.take_tokens(1600, 0.004, 2.0, 5), (2, 250));
    }

    #[test]
    fn a_window_starts_small_and_grows_by_one_per_answer() {
        let sh = new_shared();
        let i = reg(&sh, "w").expect("room"); // ok: test
        let s = sh.scope(i);
        s.pause(1, None);
        s.resume();
        assert_eq!(s.window_now(32), RAMP_START);
        assert_eq!(s.window_now(2), 2, "never more than the window");
        for _ in 0..10 {
            s.turn_ended();
        }
        assert_eq!(s.window_now(32), RAMP_START + 10);
        for _ in 0..100 {
            s.turn_ended();
        }
        assert_eq!(s.window_now(32), 32);
        s.pause(2, None);
        s.resume();
        assert_eq!(s.window_now(32), RAMP_START, "a new release starts small again");
    }
}
