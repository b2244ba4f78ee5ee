//! `ngx_http_intermission_module`: holds the requests of a paused scope inside nginx and
//! releases them, in arrival order, when the scope resumes.
//!
//! This crate is the FFI glue only; the logic nginx does not need to be present for (scope
//! names, control requests, the shared state, rendering) is in `intermission-core`.
//!
//! - `conf`:    directives and configuration structures;
//! - `zone`:    the shared zone that carries the state between workers and across reloads;
//! - `request`: per-request state, kept across internal redirects; in-flight accounting;
//! - `hold`:    the access-phase handler that passes, holds or rejects requests;
//! - `worker`:  per-worker queues of held requests, their release, in-flight counts, timers;
//! - `drain`:   control requests that wait until nothing is in flight;
//! - `vars`:    the `$intermission_*` variables;
//! - `persist`: the paused scopes on disk (`intermission_state_file`), restored after a full
//!   restart and followed by the other generation of a binary upgrade;
//! - `wake`:    the eventfd that wakes every worker when a scope resumes;
//! - `control`: the `intermission_control` endpoint;
//! - `ngx_util`: small wrappers over nginx calls shared by the others.

mod conf;
mod control;
mod drain;
mod hold;
mod ngx_util;
mod persist;
mod request;
mod vars;
mod wake;
mod worker;
mod zone;

use core::ffi::{c_char, c_void};
use core::mem::offset_of;
use core::ptr::{addr_of, addr_of_mut, null_mut};

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_http_set_predicate_slot, ngx_int_t,
    ngx_module_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_NOARGS, NGX_CONF_TAKE1,
    NGX_CONF_TAKE12, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};
use ngx::ngx_string;

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
        conf::postconfiguration(unsafe { &mut *cf })
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

/// The directives that tune a location; they go where `intermission` goes.
const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

type SetFn = unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// A location-level directive: its name, where it goes and how many arguments it takes,
/// its handler, and the offset its handler writes at (for nginx's stock slots).
const fn directive(name: ngx_str_t, type_: u32, set: SetFn, offset: usize) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset,
        post: null_mut(),
    }
}

static mut COMMANDS: [ngx_command_t; 9] = [
    directive(ngx_string!("intermission"), ANY_LEVEL | NGX_CONF_TAKE1, conf::cmd_intermission, 0),
    directive(
        ngx_string!("intermission_control"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        conf::cmd_intermission_control,
        0,
    ),
    directive(
        ngx_string!("intermission_max_time"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        conf::cmd_max_time,
        0,
    ),
    directive(
        ngx_string!("intermission_on_timeout"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        conf::cmd_on_timeout,
        0,
    ),
    directive(
        ngx_string!("intermission_max_held"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        conf::cmd_max_held,
        0,
    ),
    directive(
        ngx_string!("intermission_release_rate"),
        ANY_LEVEL | NGX_CONF_TAKE12,
        conf::cmd_release_rate,
        0,
    ),
    // nginx's own slot for `proxy_no_cache`-style predicates.
    directive(
        ngx_string!("intermission_bypass"),
        ANY_LEVEL | NGX_CONF_1MORE,
        ngx_http_set_predicate_slot,
        offset_of!(conf::LocConf, bypass),
    ),
    ngx_command_t {
        name: ngx_string!("intermission_state_file"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::cmd_state_file),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: null_mut(),
    },
    ngx_command_t::empty(),
];

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

// The `ngx_modules` table a dynamic module exports for nginx's loader.
ngx::ngx_modules!(ngx_http_intermission_module);

#[used]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_intermission_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(CTX) as _,
    // SAFETY: only the address is taken; nginx reads the table while it parses directives.
    commands: unsafe { addr_of_mut!(COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(worker::init_module),
    init_process: Some(worker::init_process),
    exit_process: Some(worker::exit_process),
    ..ngx_module_t::default()
};
