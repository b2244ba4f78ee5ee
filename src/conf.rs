//! The configuration: what the directives (`directives`) fill, and how a location inherits it.

use core::ptr::null_mut;

use intermission_core::scope_name;
use intermission_core::shared::{Shared, MAX_SCOPES};
use ngx::ffi::{ngx_array_t, ngx_cycle_t, ngx_msec_t, ngx_shm_zone_t, ngx_str_t};
use ngx::http::{HttpModuleLocationConf, Merge, MergeConfigError};

use crate::Module;

/// `http` level: the scopes this configuration names, and the shared zone.
pub struct MainConf {
    pub(crate) names: [[u8; scope_name::MAX_LEN]; MAX_SCOPES],
    lens: [u8; MAX_SCOPES],
    pub(crate) count: usize,
    /// Each configured scope's index in the shared table, set when the zone is ready.
    pub shm_index: [u16; MAX_SCOPES],
    pub zone: *mut ngx_shm_zone_t,
    /// The cycle this configuration belongs to (the master reads its `user` when the zone is
    /// initialized).
    pub cycle: *mut ngx_cycle_t,
    /// The shared state; null until the zone is initialized (and in a config that does not
    /// use the module).
    pub shared: *const Shared,
    /// Some location has `intermission_control`: the zone is needed even with no scope.
    pub(crate) control: bool,
    /// `intermission_state_file`, as a full path; empty if none.
    pub state_file: ngx_str_t,
    /// The locations with `intermission_on_failure hold` (`failure::Site`s), wired in
    /// `postconfiguration`; null if none.
    pub failure_sites: *mut ngx_array_t,
}

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            names: [[0; scope_name::MAX_LEN]; MAX_SCOPES],
            lens: [0; MAX_SCOPES],
            count: 0,
            shm_index: [0; MAX_SCOPES],
            zone: null_mut(),
            cycle: null_mut(),
            shared: core::ptr::null(),
            control: false,
            state_file: ngx_str_t { len: 0, data: null_mut() },
            failure_sites: null_mut(),
        }
    }
}

impl MainConf {
    pub fn scope_count(&self) -> usize {
        self.count
    }

    pub fn scope_name(&self, i: usize) -> &str {
        let name = &self.names[i][..usize::from(self.lens[i])];
        // Names were validated as ASCII when the configuration was read.
        core::str::from_utf8(name).unwrap_or("?")
    }

    /// The configured scope of this name, as an index into this configuration's scopes.
    pub fn find(&self, name: &str) -> Option<usize> {
        (0..self.count).find(|&i| self.scope_name(i) == name)
    }

    /// The configured scope whose index in the shared table is `shm`.
    pub fn local(&self, shm: usize) -> Option<usize> {
        (0..self.count).find(|&i| usize::from(self.shm_index[i]) == shm)
    }

    pub(crate) fn add(&mut self, name: &str) -> Result<usize, String> {
        if let Some(i) = self.find(name) {
            return Ok(i);
        }
        if self.count == MAX_SCOPES {
            return Err(format!(
                "is one scope more than the {MAX_SCOPES} a configuration may name"
            ));
        }
        let i = self.count;
        self.names[i][..name.len()].copy_from_slice(name.as_bytes());
        self.lens[i] = name.len() as u8;
        self.count += 1;
        Ok(i)
    }

    /// The shared state, once the zone exists.
    pub fn shared(&self) -> Option<&'static Shared> {
        // SAFETY: `shared` points into the shared zone, mapped for the life of the process.
        unsafe { self.shared.as_ref() }
    }
}

pub(crate) const UNSET: i32 = -1;
pub(crate) const OFF: i32 = -2;
pub(crate) const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
pub(crate) const UNSET_COUNT: u64 = u64::MAX;
/// `intermission_on_failure hold`'s `interval=` when none is set.
pub(crate) const DEFAULT_CHECK_INTERVAL_MS: ngx_msec_t = 1000;
/// `intermission_max_time` when none is set.
const DEFAULT_MAX_TIME_MS: ngx_msec_t = 60_000;
/// `intermission_release_window` when none is set.
pub(crate) const DEFAULT_RELEASE_WINDOW: u64 = 32;
/// The largest `intermission_max_held`, and the largest `burst=`.
pub(crate) const MAX_COUNT: u64 = 10_000_000;

/// `intermission_on_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    Unset,
    Pass,
    Reject,
}

/// `location` level: which scope holds this location's requests, and its valves.
#[derive(Debug)]
pub struct LocConf {
    pub(crate) scope: i32,
    pub control: bool,
    pub max_time_ms: ngx_msec_t,
    pub on_timeout: OnTimeout,
    /// 0: the worker's default (half the connections of all workers).
    pub max_held: u64,
    /// `intermission_bypass` predicates, null if none.
    pub bypass: *mut ngx_array_t,
    /// `intermission_release_rate`, requests per `RATE_PERIOD_S` over the instance; 0: none.
    pub release_rate: u64,
    /// Its `burst=`: how many go out at once when a release starts.
    pub release_burst: u64,
    /// `intermission_release_window`: at most this many released requests of the scope in
    /// flight over the instance; 0: off.
    pub release_window: u64,
    /// `intermission_drain`: 1 if a drain waits for this location's requests (nginx's
    /// `ngx_flag_t`, -1 unset).
    pub drain: isize,
    /// `intermission_close_on_pause`: 1 if a pause closes this location's upgraded
    /// connections and streams.
    pub close_on_pause: isize,
    /// `intermission_on_failure hold`: 1, set in this very location (not inherited: the
    /// wiring is per location); -1 unset.
    pub on_failure: isize,
    /// Its `interval=`: how often a readiness check is sent while requests are held because
    /// of a failure.
    pub check_interval_ms: ngx_msec_t,
    /// Its `idempotent`: failures after the request was sent count too, for the methods
    /// nginx retries (not POST, LOCK, PATCH).
    pub fail_idempotent: bool,
    /// Its `http_503`: an upstream's 503 answer counts too (any method).
    pub fail_503: bool,
    /// Its `check=`: the URI the readiness check requests; empty: a trial send of the
    /// oldest held request.
    pub check_uri: ngx_str_t,
    /// In the configuration of a location's named twin (`failure::wire`): the error status
    /// that led there; 0 in the location itself.
    pub twin_status: u32,
}

impl Default for LocConf {
    fn default() -> Self {
        LocConf {
            scope: UNSET,
            control: false,
            max_time_ms: UNSET_MSEC,
            on_timeout: OnTimeout::Unset,
            max_held: UNSET_COUNT,
            // nginx's NGX_CONF_UNSET_PTR, which `ngx_http_set_predicate_slot` expects.
            bypass: usize::MAX as *mut ngx_array_t,
            release_rate: UNSET_COUNT,
            release_burst: 0,
            release_window: UNSET_COUNT,
            drain: -1,
            close_on_pause: -1,
            on_failure: -1,
            check_interval_ms: DEFAULT_CHECK_INTERVAL_MS,
            fail_idempotent: false,
            fail_503: false,
            check_uri: ngx_str_t { len: 0, data: core::ptr::null_mut() },
            twin_status: 0,
        }
    }
}

impl LocConf {
    /// The index of this location's scope in [`MainConf`], if it is held at all.
    pub fn scope(&self) -> Option<usize> {
        usize::try_from(self.scope).ok()
    }
}

impl Merge for LocConf {
    fn merge(&mut self, prev: &LocConf) -> Result<(), MergeConfigError> {
        if self.scope == UNSET {
            self.scope = if prev.scope == UNSET { OFF } else { prev.scope };
        }
        if self.max_time_ms == UNSET_MSEC {
            self.max_time_ms =
                if prev.max_time_ms == UNSET_MSEC { DEFAULT_MAX_TIME_MS } else { prev.max_time_ms };
        }
        if self.on_timeout == OnTimeout::Unset {
            self.on_timeout =
                if prev.on_timeout == OnTimeout::Unset { OnTimeout::Pass } else { prev.on_timeout };
        }
        if self.max_held == UNSET_COUNT {
            self.max_held = if prev.max_held == UNSET_COUNT { 0 } else { prev.max_held };
        }
        if self.release_rate == UNSET_COUNT {
            (self.release_rate, self.release_burst) = if prev.release_rate == UNSET_COUNT {
                (0, 0)
            } else {
                (prev.release_rate, prev.release_burst)
            };
        }
        if self.release_window == UNSET_COUNT {
            self.release_window = if prev.release_window == UNSET_COUNT {
                DEFAULT_RELEASE_WINDOW
            } else {
                prev.release_window
            };
        }
        for (v, p, default) in
            [(&mut self.drain, prev.drain, 1), (&mut self.close_on_pause, prev.close_on_pause, 0)]
        {
            if *v == -1 {
                *v = if p == -1 { default } else { p };
            }
        }
        // Not inherited: `intermission_on_failure` wires the location it is in.
        if self.on_failure == -1 {
            self.on_failure = 0;
        }
        let unset = usize::MAX as *mut ngx_array_t;
        if self.bypass == unset {
            self.bypass = if prev.bypass == unset { core::ptr::null_mut() } else { prev.bypass };
        }
        Ok(())
    }
}

/// This location's configuration.
pub fn loc_conf(r: &ngx::ffi::ngx_http_request_t) -> Option<&'static LocConf> {
    Module::location_conf(r)
}
