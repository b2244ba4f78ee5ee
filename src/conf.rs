//! Directives: `intermission` and `intermission_control`, and the configuration they fill.

use core::ffi::{c_char, c_void};
use core::ptr::null_mut;

use intermission_core::scope_name::{self, Setting};
use intermission_core::shared::{Shared, MAX_SCOPES};
use intermission_core::text::printable;
use intermission_core::time;
use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_array_t, ngx_command_t, ngx_conf_full_name, ngx_conf_t, ngx_cycle_t, ngx_http_handler_pt,
    ngx_http_phases_NGX_HTTP_ACCESS_PHASE as NGX_HTTP_ACCESS_PHASE, ngx_int_t, ngx_msec_t,
    ngx_shm_zone_t, ngx_str_t, NGX_LOG_EMERG,
};
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError, NgxHttpCoreModule,
};
use ngx::ngx_conf_log_error;

use crate::{control, hold, zone, Module};

/// `http` level: the scopes this configuration names, and the shared zone.
pub struct MainConf {
    names: [[u8; scope_name::MAX_LEN]; MAX_SCOPES],
    lens: [u8; MAX_SCOPES],
    count: usize,
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
    control: bool,
    /// `intermission_state_file`, as a full path; empty if none.
    pub state_file: ngx_str_t,
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

    fn add(&mut self, name: &str) -> Result<usize, String> {
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

const UNSET: i32 = -1;
const OFF: i32 = -2;
const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
const UNSET_COUNT: u64 = u64::MAX;
/// `intermission_max_time` when none is set.
const DEFAULT_MAX_TIME_MS: ngx_msec_t = 60_000;
/// The largest `intermission_max_held`, and the largest `burst=`.
const MAX_COUNT: u64 = 10_000_000;

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
    scope: i32,
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
        let unset = usize::MAX as *mut ngx_array_t;
        if self.bypass == unset {
            self.bypass = if prev.bypass == unset { core::ptr::null_mut() } else { prev.bypass };
        }
        Ok(())
    }
}

/// `intermission on | off | <scope>;`
pub extern "C" fn cmd_intermission(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with a valid context, this module's location
    // configuration as `conf`, and (NGX_CONF_TAKE1) two words in `cf.args`.
    let (cf, lcf, arg) = unsafe {
        let cf = &mut *cf;
        let arg = (*cf.args).as_slice::<ngx::ffi::ngx_str_t>()[1];
        (cf, &mut *conf.cast::<LocConf>(), arg)
    };
    if lcf.scope != UNSET {
        return conf_error(cf, "intermission", "is duplicate");
    }
    let setting = match scope_name::parse_setting(arg.as_bytes()) {
        Ok(s) => s,
        Err(e) => return conf_error(cf, "intermission", &format!("has an invalid scope: {e}")),
    };
    lcf.scope = match setting {
        Setting::Off => OFF,
        Setting::Scope(name) => {
            let Some(mcf) = Module::main_conf_mut(cf) else {
                return conf_error(cf, "intermission", "has no http configuration");
            };
            match mcf.add(name) {
                Ok(i) => i as i32,
                Err(e) => return conf_error(cf, "intermission", &e),
            }
        }
    };
    NGX_CONF_OK
}

/// The one argument of a TAKE1 directive.
fn arg1(cf: &ngx_conf_t) -> &[u8] {
    // SAFETY: nginx calls TAKE1 handlers with two words in `cf.args`.
    unsafe { (*cf.args).as_slice::<ngx::ffi::ngx_str_t>()[1].as_bytes() }
}

/// `intermission_max_time <time>;`
pub extern "C" fn cmd_max_time(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes a valid context and this module's location configuration.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *conf.cast::<LocConf>()) };
    if lcf.max_time_ms != UNSET_MSEC {
        return conf_error(cf, "intermission_max_time", "is duplicate");
    }
    match time::parse_duration_ms(arg1(cf)) {
        Ok(ms) => lcf.max_time_ms = ms as ngx_msec_t,
        Err(e) => return conf_error(cf, "intermission_max_time", &format!("has an {e}")),
    }
    NGX_CONF_OK
}

/// `intermission_on_timeout pass | reject;`
pub extern "C" fn cmd_on_timeout(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as for `cmd_max_time`.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *conf.cast::<LocConf>()) };
    if lcf.on_timeout != OnTimeout::Unset {
        return conf_error(cf, "intermission_on_timeout", "is duplicate");
    }
    lcf.on_timeout = match arg1(cf) {
        b"pass" => OnTimeout::Pass,
        b"reject" => OnTimeout::Reject,
        other => {
            let msg = format!("has an invalid value \"{}\": use pass or reject", printable(other));
            return conf_error(cf, "intermission_on_timeout", &msg);
        }
    };
    NGX_CONF_OK
}

/// A count from 1 to `MAX_COUNT`, in plain decimal digits.
fn count(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 8 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(b).ok()?.parse().ok().filter(|n| (1..=MAX_COUNT).contains(n))
}

/// `intermission_max_held <number>;`
pub extern "C" fn cmd_max_held(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as for `cmd_max_time`.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *conf.cast::<LocConf>()) };
    if lcf.max_held != UNSET_COUNT {
        return conf_error(cf, "intermission_max_held", "is duplicate");
    }
    let arg = arg1(cf);
    match count(arg) {
        Some(n) => lcf.max_held = n,
        None => {
            let msg = format!("has an invalid number \"{}\": use 1 to {MAX_COUNT}", printable(arg));
            return conf_error(cf, "intermission_max_held", &msg);
        }
    }
    NGX_CONF_OK
}

/// `intermission_release_rate <n>r/s | <n>r/m [burst=<n>];`
pub extern "C" fn cmd_release_rate(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes a valid context and this module's location configuration.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *conf.cast::<LocConf>()) };
    if lcf.release_rate != UNSET_COUNT {
        return conf_error(cf, "intermission_release_rate", "is duplicate");
    }
    // SAFETY: TAKE12: two or three words in `cf.args`.
    let args = unsafe { (*cf.args).as_slice::<ngx_str_t>() };
    let rate = match time::parse_rate(args[1].as_bytes()) {
        Ok(r) => r,
        Err(e) => return conf_error(cf, "intermission_release_rate", &format!("has an {e}")),
    };
    let mut burst = 1;
    if let Some(arg) = args.get(2) {
        match arg.as_bytes().strip_prefix(b"burst=").and_then(count) {
            Some(n) => burst = n,
            None => {
                let msg = format!(
                    "has an invalid parameter \"{}\": use burst=<1 to {MAX_COUNT}>",
                    printable(arg.as_bytes())
                );
                return conf_error(cf, "intermission_release_rate", &msg);
            }
        }
    }
    lcf.release_rate = rate;
    lcf.release_burst = burst;
    NGX_CONF_OK
}

/// `intermission_state_file <path>;` (http): relative to nginx's prefix.
pub extern "C" fn cmd_state_file(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes a valid context and this module's main configuration.
    let (cf, mcf) = unsafe { (&mut *cf, &mut *conf.cast::<MainConf>()) };
    if mcf.state_file.len != 0 {
        return conf_error(cf, "intermission_state_file", "is duplicate");
    }
    // SAFETY: TAKE1: two words in `cf.args`.
    let mut name = unsafe { (*cf.args).as_slice::<ngx_str_t>()[1] };
    if name.len == 0 {
        return conf_error(cf, "intermission_state_file", "has an empty path");
    }
    // SAFETY: nginx resolves the name against the prefix into the cycle's pool.
    if unsafe { ngx_conf_full_name(cf.cycle, &mut name, 0) } != Status::NGX_OK.0 {
        return NGX_CONF_ERROR;
    }
    mcf.state_file = name;
    NGX_CONF_OK
}

/// `intermission_control;`
pub extern "C" fn cmd_intermission_control(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as for `cmd_intermission`.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *conf.cast::<LocConf>()) };
    if lcf.control {
        return conf_error(cf, "intermission_control", "is duplicate");
    }
    lcf.control = true;
    if let Some(mcf) = Module::main_conf_mut(cf) {
        mcf.control = true;
    }
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf) else {
        return conf_error(cf, "intermission_control", "has no location configuration");
    };
    clcf.handler = Some(control::handler);
    NGX_CONF_OK
}

/// After the `http` block: the shared zone and the access handler, if the module is used.
pub fn postconfiguration(cf: &mut ngx_conf_t) -> ngx_int_t {
    let Some(mcf) = Module::main_conf_mut(cf) else {
        return Status::NGX_OK.into();
    };
    if mcf.count == 0 && !mcf.control {
        return Status::NGX_OK.into();
    }
    if zone::add(cf, mcf).is_err() {
        return Status::NGX_ERROR.into();
    }
    let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(cf) else {
        return Status::NGX_ERROR.into();
    };
    // SAFETY: the phase arrays were created by the core module before postconfiguration.
    let h = unsafe {
        ngx::ffi::ngx_array_push(&mut cmcf.phases[NGX_HTTP_ACCESS_PHASE as usize].handlers)
            .cast::<ngx_http_handler_pt>()
    };
    if h.is_null() {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: `h` is a fresh slot of the handler array.
    unsafe { *h = Some(hold::access_handler) };
    Status::NGX_OK.into()
}

/// Logs a configuration error that names the directive, and fails the configuration.
fn conf_error(cf: &mut ngx_conf_t, directive: &str, msg: &str) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "\"{}\" directive {}", directive, msg);
    NGX_CONF_ERROR
}

/// This location's configuration.
pub fn loc_conf(r: &ngx::ffi::ngx_http_request_t) -> Option<&'static LocConf> {
    Module::location_conf(r)
}
