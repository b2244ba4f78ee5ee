//! A release: in batches, one per event-loop turn, in arrival order. The released requests'
//! upstream connections are opened by one batch and their requests sent by epoll before the
//! next batch starts, so the first released request reaches the backend within a millisecond
//! or two, however many are held. A paced release (`intermission_release_rate`) takes its
//! tokens from one bucket per scope in the shared zone, under the zone's mutex as
//! `limit_req` does, and gives them to the oldest held requests over all workers first.

use core::ptr;

use intermission_core::time::RATE_PERIOD_S;
use ngx::ffi::{
    ngx_add_timer, ngx_current_msec, ngx_msec_t, ngx_post_event, ngx_posted_next_events,
};

use super::request::ReqState;
use super::{wake, Worker};
use crate::conf;
use crate::ngx_util::process_alive;
use crate::shm;

/// Requests released per event-loop turn.
pub const RELEASE_BATCH: u64 = 64;

/// A scope's release pace: the instance's rate and burst.
pub(super) struct Pace {
    per_ms: f64,
    burst: f64,
}

impl Worker {
    /// Starts releasing, in arrival order, the requests of scope `i` whose pause has ended:
    /// the first batch now, the rest one batch per event-loop turn. Returns how many this
    /// worker holds for the scope.
    pub fn release_ready(&self, i: usize) -> u32 {
        let queued = self.queues[i].len.get();
        self.release_batch(i, RELEASE_BATCH);
        self.continue_release();
        queued
    }

    /// Releases up to `max` requests of scope `i` whose pause has ended: their write events
    /// are posted, and nginx runs their phases on from where they stopped.
    pub(super) fn release_batch(&self, i: usize, max: u64) -> u64 {
        // A resume while the backend is down sends nothing into the failure; the scope's
        // coming up releases them.
        if !self.scope(i).may_release() {
            return 0;
        }
        let epoch = self.scope(i).epoch();
        let max = match self.pace_of(i) {
            Some(p) => self.take_tokens(i, epoch, max, &p),
            None => max,
        };
        let mut n = 0u64;
        while n < max {
            let Some(st) = self.first(i) else { break };
            if st.epoch >= epoch {
                break;
            }
            self.let_go(st, "");
            n += 1;
        }
        if n > 0 {
            self.scope(i).count_released(n);
            self.publish_held(i);
        }
        n
    }

    /// The tokens of scope `i`'s instance-wide bucket this worker may use now, for up to
    /// `max` of its ready requests: only for those older than every other worker's oldest
    /// ready request, so that the oldest go first over all workers. Sets how long the queue
    /// waits for the next try.
    pub(super) fn take_tokens(&self, i: usize, epoch: u64, max: u64, p: &Pace) -> u64 {
        // SAFETY: nginx's cached monotonic clock, the same in every process of the machine.
        let now = unsafe { ngx_current_msec } as u64;
        let interval = (1.0 / p.per_ms).ceil().max(1.0) as u64;
        let (took, ready, wait) = shm::locked(self.mcf, || {
            let others = self.shared.others_oldest(self.shm(i), self.slot, process_alive);
            let mine = self.ready_before(i, epoch, others, max);
            let (took, wait) = self.scope(i).take_tokens(now, p.per_ms, p.burst, mine);
            (took, mine, wait)
        });
        let q = &self.queues[i];
        q.pace_wait.set(if took == max {
            0
        } else if took < ready {
            wait.max(1)
        } else {
            // The others' requests are older: they take the next tokens.
            interval
        });
        took
    }

    /// How many of the first `max` requests of queue `i` are ready (held under an epoch
    /// before `epoch`) and arrived before `before`.
    pub(super) fn ready_before(&self, i: usize, epoch: u64, before: u64, max: u64) -> u64 {
        let head = self.queues[i].head.get();
        let mut n = 0;
        // SAFETY: every link in the queue is the first field of a live `ReqState`.
        unsafe {
            let mut q = (*head).next;
            while n < max && q != head {
                let st = &*q.cast::<ReqState>();
                if st.epoch >= epoch || st.arrival >= before {
                    break;
                }
                n += 1;
                q = (*q).next;
            }
        }
        n
    }

    /// The pace of scope `i`'s release, from the location of its first held request; `None`
    /// if it is not paced.
    pub(super) fn pace_of(&self, i: usize) -> Option<Pace> {
        // SAFETY: a held request is alive.
        let r = unsafe { &*self.first(i)?.r };
        let lcf = conf::loc_conf(r)?;
        (lcf.release_rate > 0).then(|| Pace {
            per_ms: lcf.release_rate as f64 / (RATE_PERIOD_S * 1000) as f64,
            burst: lcf.release_burst.max(1) as f64,
        })
    }

    /// Whether scope `i` has a request whose pause has ended.
    pub(super) fn has_ready(&self, i: usize) -> bool {
        let scope = self.scope(i);
        scope.may_release() && self.first(i).is_some_and(|st| st.epoch < scope.epoch())
    }

    /// Schedules the next batch: for the next event-loop turn if a ready scope may release
    /// now, or for when the first paced one may.
    pub(super) fn continue_release(&self) {
        let wait = (0..self.queues.len())
            .filter(|&i| self.has_ready(i))
            .map(|i| if self.pace_of(i).is_some() { self.queues[i].pace_wait.get() } else { 0 })
            .min();
        // SAFETY: the events live in the leaked state; the next-turn queue is moved to the
        // posted queue after the next epoll wait.
        unsafe {
            match wait {
                None => {}
                Some(0) if (*self.more.get()).posted() == 0 => {
                    ngx_post_event(self.more.get(), ptr::addr_of_mut!(ngx_posted_next_events));
                }
                Some(0) => {}
                Some(ms) if (*self.pace.get()).timer_set() == 0 => {
                    ngx_add_timer(self.pace.get(), ms.min(60_000) as ngx_msec_t);
                }
                Some(_) => {}
            }
        }
    }

    /// After a scope of the shared table resumed: releases what this worker holds of it,
    /// and wakes the other workers. Returns how many this worker holds for it.
    pub fn resumed(&self, shm: usize) -> u32 {
        let here = self.mcf.local(shm).map_or(0, |i| self.release_ready(i));
        wake::notify();
        here
    }
}

pub(super) fn release_some(w: &Worker) {
    let mut budget = RELEASE_BATCH;
    for i in 0..w.queues.len() {
        if budget == 0 {
            break;
        }
        if w.has_ready(i) {
            budget -= w.release_batch(i, budget);
        }
    }
    w.continue_release();
}
