//! `ngx_http_intermission_module`: holds the requests of a paused scope inside nginx and
//! releases them, in arrival order, when the scope resumes.
//!
//! This crate is the FFI glue only; the logic nginx does not need to be present for (scope
//! names, control requests, the shared state, rendering) is in `intermission-core`.
//!
//! Dependencies run one way, from the bottom of this list to its top:
//!
//! - this file: the module's statics, the start-up and exit of processes, and the wiring of
//!   the handlers into nginx (access phase, shared zone);
//! - `directives`: the directive table and the handlers that fill the configuration;
//! - `access`:   the access-phase handler that passes, holds or rejects requests;
//! - `control`:  the `intermission_control` endpoint;
//! - `vars`:     the `$intermission_*` variables;
//! - `upgrade`, `body_end`: the header and body filters that notice an answer's start (a
//!   WebSocket's 101, a backend back) and its end (a release window's turn);
//! - `runtime`:  per-worker state: held queues, release, in-flight counts, drain waiters,
//!   per-request state, timers, the eventfd;
//! - `persist`:  the paused scopes on disk (`intermission_state_file`);
//! - `shm`:      the shared zone that carries the state between processes and reloads;
//! - `conf`:     the configuration structures and their merge;
//! - `ngx_util`: small wrappers over nginx calls shared by the others.

mod access;
mod body_end;
mod conf;
mod control;
mod directives;
mod failure;
mod ngx_util;
mod persist;
mod runtime;
mod shm;
mod upgrade;
mod vars;

use core::ffi::c_void;
use core::ptr::{addr_of, addr_of_mut};

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_cycle_t, ngx_http_handler_pt, ngx_http_module_t,
    ngx_http_phases_NGX_HTTP_ACCESS_PHASE as NGX_HTTP_ACCESS_PHASE, ngx_int_t, ngx_module_t,
    ngx_process, ngx_shm_zone_t, ngx_test_config, NGX_HTTP_MODULE, NGX_LOG_EMERG,
    NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::ngx_log_error;

pub(crate) struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module object is only written by nginx while it loads the module.
        unsafe { &*addr_of!(ngx_http_intermission_module) }
    }

    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: nginx passes a valid configuration context.
        vars::add(unsafe { &mut *cf })
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: nginx passes a valid configuration context.
        postconfiguration(unsafe { &mut *cf })
    }
}

// SAFETY: the configuration types are the ones the context below creates.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = conf::MainConf;
}

// SAFETY: as above.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = conf::LocConf;
}

static CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(Module::preconfiguration),
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(Module::merge_loc_conf),
};

/// After the `http` block: the shared zone and the access handler, if the module is used.
fn postconfiguration(cf: &mut ngx_conf_t) -> ngx_int_t {
    let Some(mcf) = Module::main_conf_mut(cf) else {
        return Status::NGX_OK.into();
    };
    if mcf.count == 0 && !mcf.control {
        return Status::NGX_OK.into();
    }
    if shm::add(cf, mcf, Some(init_zone)).is_err() {
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
    unsafe { *h = Some(access::handler) };
    upgrade::install();
    body_end::install();
    if let Err(e) = failure::wire(cf, mcf) {
        ngx::ngx_conf_log_error!(ngx::ffi::NGX_LOG_EMERG, cf, "\"intermission_on_failure\" {}", e);
        return Status::NGX_ERROR.into();
    }
    Status::NGX_OK.into()
}

/// The shared zone is mapped (in the master, and in `nginx -t`): its state is adopted or
/// made and this configuration's scopes registered; a new zone (a start, or the new binary
/// of an upgrade) takes what the state file says was paused. `nginx -t` restores nothing:
/// its zone is thrown away.
extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes the zone declared in `shm::add`, whose `data` is this cycle's main
    // configuration.
    let (log, mcf) = unsafe { ((*zone).shm.log, &mut *(*zone).data.cast::<conf::MainConf>()) };
    if let Err(e) = persist::check_dir(mcf, mcf.cycle) {
        ngx_log_error!(NGX_LOG_EMERG, log, "\"intermission_state_file\" directive: {}", e);
        return Status::NGX_ERROR.into();
    }
    match shm::init(zone, data) {
        Ok((shared, fresh)) => {
            // SAFETY: set by nginx before it reads the configuration.
            if fresh && unsafe { ngx_test_config } == 0 {
                persist::restore(mcf, shared, mcf.cycle, log);
            }
            Status::NGX_OK.into()
        }
        Err(e) => {
            ngx_log_error!(NGX_LOG_EMERG, log, "intermission: {}", e);
            Status::NGX_ERROR.into()
        }
    }
}

/// In the master, for every configuration: what the workers must inherit.
unsafe extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    runtime::wake::create();
    // SAFETY: nginx passes the cycle it has just committed.
    runtime::shutdown::committed(unsafe { &*cycle });
    Status::NGX_OK.into()
}

/// The cache manager and loader run every module's `init_process` too, and exit without
/// `exit_process`: only workers (and nginx without a master) hold, count and follow, as
/// nginx-acme filters on it.
unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: set by nginx before the process's modules are initialized.
    let process = unsafe { ngx_process } as u32;
    if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
        return Status::NGX_OK.into();
    }
    // SAFETY: nginx passes the worker's cycle.
    runtime::start(unsafe { &*cycle });
    Status::NGX_OK.into()
}

unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    runtime::stop();
}

// The `ngx_modules` table a dynamic module exports for nginx's loader.
ngx::ngx_modules!(ngx_http_intermission_module);

#[used]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_intermission_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(CTX) as _,
    // SAFETY: only the address is taken; nginx reads the table while it parses directives.
    commands: unsafe { addr_of_mut!(directives::COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(init_module),
    init_process: Some(init_process),
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};
