//! The directives: their table, and the handlers that fill the configuration (`conf`).

use core::ffi::{c_char, c_void};
use core::mem::offset_of;
use core::ptr::null_mut;

use intermission_core::scope_name::{self, Setting};
use intermission_core::text::printable;
use intermission_core::time;
use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_full_name, ngx_conf_set_flag_slot, ngx_conf_t,
    ngx_http_set_predicate_slot, ngx_msec_t, ngx_parse_time, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE,
    NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE12, NGX_HTTP_LOC_CONF,
    NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF,
    NGX_LOG_EMERG,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_string};

use crate::conf::{LocConf, MainConf, OnTimeout, MAX_COUNT, OFF, UNSET, UNSET_COUNT, UNSET_MSEC};
use crate::{control, Module};

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

pub static mut COMMANDS: [ngx_command_t; 13] = [
    directive(ngx_string!("intermission"), ANY_LEVEL | NGX_CONF_TAKE1, cmd_intermission, 0),
    directive(
        ngx_string!("intermission_control"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        cmd_intermission_control,
        0,
    ),
    directive(ngx_string!("intermission_max_time"), ANY_LEVEL | NGX_CONF_TAKE1, cmd_max_time, 0),
    directive(
        ngx_string!("intermission_on_timeout"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_on_timeout,
        0,
    ),
    directive(ngx_string!("intermission_max_held"), ANY_LEVEL | NGX_CONF_TAKE1, cmd_max_held, 0),
    directive(
        ngx_string!("intermission_drain"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(LocConf, drain),
    ),
    directive(
        ngx_string!("intermission_on_failure"),
        NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
        cmd_on_failure,
        0,
    ),
    directive(
        ngx_string!("intermission_close_on_pause"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(LocConf, close_on_pause),
    ),
    directive(
        ngx_string!("intermission_release_rate"),
        ANY_LEVEL | NGX_CONF_TAKE12,
        cmd_release_rate,
        0,
    ),
    directive(
        ngx_string!("intermission_release_window"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_release_window,
        0,
    ),
    // nginx's own slot for `proxy_no_cache`-style predicates.
    directive(
        ngx_string!("intermission_bypass"),
        ANY_LEVEL | NGX_CONF_1MORE,
        ngx_http_set_predicate_slot,
        offset_of!(LocConf, bypass),
    ),
    ngx_command_t {
        name: ngx_string!("intermission_state_file"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(cmd_state_file),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: null_mut(),
    },
    ngx_command_t::empty(),
];

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
    // nginx's own parser, so that a time nginx takes elsewhere (`1h 30m`) is taken here.
    // SAFETY: TAKE1: two words in `cf.args`; the parser only reads the copy it is given.
    let mut arg = unsafe { (*cf.args).as_slice::<ngx_str_t>()[1] };
    // SAFETY: as above.
    let ms = unsafe { ngx_parse_time(&mut arg, 0) };
    match u64::try_from(ms) {
        Ok(ms) if (1..=time::MAX_DURATION_MS).contains(&ms) => lcf.max_time_ms = ms as ngx_msec_t,
        _ => {
            let msg = format!(
                "has an invalid time \"{}\": use e.g. 500ms, 30s, 2m, 1h 30m, from 1ms to 24h",
                printable(arg1(cf))
            );
            return conf_error(cf, "intermission_max_time", &msg);
        }
    }
    NGX_CONF_OK
}

/// `intermission_on_failure off | hold [idempotent] [http_503] [interval=time] [check=uri];`
pub extern "C" fn cmd_on_failure(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    const NAME: &str = "intermission_on_failure";
    // SAFETY: nginx passes a valid context and this module's location configuration.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *conf.cast::<LocConf>()) };
    if lcf.on_failure != -1 {
        return conf_error(cf, NAME, "is duplicate");
    }
    // SAFETY: 1MORE: the directive's name and at least one word in `cf.args`.
    let args = unsafe { (*cf.args).as_slice::<ngx_str_t>() };
    match args[1].as_bytes() {
        b"off" if args.len() == 2 => lcf.on_failure = 0,
        b"off" => return conf_error(cf, NAME, "takes no options with off"),
        b"hold" => lcf.on_failure = 1,
        other => {
            let msg = format!("has an invalid value \"{}\": use off or hold", printable(other));
            return conf_error(cf, NAME, &msg);
        }
    }
    let mut seen: Vec<&[u8]> = Vec::new();
    for opt in &args[2..] {
        let opt = opt.as_bytes();
        let key = opt.iter().position(|&b| b == b'=').map_or(opt, |i| &opt[..=i]);
        if seen.contains(&key) {
            let msg = format!("has \"{}\" twice", printable(key));
            return conf_error(cf, NAME, &msg);
        }
        seen.push(key);
        if let Err(msg) = on_failure_option(lcf, opt) {
            return conf_error(cf, NAME, &msg);
        }
    }
    if lcf.on_failure == 1 {
        if let Err(e) = crate::failure::remember(cf) {
            return conf_error(cf, NAME, &e);
        }
    }
    NGX_CONF_OK
}

/// One option of `intermission_on_failure hold`.
fn on_failure_option(lcf: &mut LocConf, opt: &[u8]) -> Result<(), String> {
    match opt {
        b"idempotent" => lcf.fail_idempotent = true,
        b"http_503" => lcf.fail_503 = true,
        _ => {
            if let Some(v) = opt.strip_prefix(b"interval=") {
                let mut t = ngx_str_t { len: v.len(), data: v.as_ptr().cast_mut() };
                // SAFETY: nginx's time parser reads the `len` bytes it is given.
                let ms = unsafe { ngx_parse_time(&mut t, 0) };
                match u64::try_from(ms) {
                    Ok(ms) if (10..=3_600_000).contains(&ms) => {
                        lcf.check_interval_ms = ms as ngx_msec_t
                    }
                    _ => {
                        return Err(format!(
                            "has an invalid interval \"{}\": use e.g. 500ms, 1s, 10s, from 10ms \
                             to 1h",
                            printable(v)
                        ))
                    }
                }
            } else if let Some(v) = opt.strip_prefix(b"check=") {
                // A URI of this server, as `auth_request` takes: no scheme, no host.
                if v.first() != Some(&b'/') || v.iter().any(|&b| b <= b' ' || b == 0x7f) {
                    return Err(format!(
                        "has an invalid check URI \"{}\": use a URI of this server, such as \
                         check=/healthz",
                        printable(v)
                    ));
                }
                // The argument lives in the configuration's pool for the cycle's life.
                lcf.check_uri = ngx_str_t { len: v.len(), data: v.as_ptr().cast_mut() };
            } else {
                return Err(format!(
                    "has an unknown option \"{}\": use idempotent, http_503, interval=, check=",
                    printable(opt)
                ));
            }
        }
    }
    Ok(())
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

/// `intermission_release_window <number> | off;`
pub extern "C" fn cmd_release_window(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as for `cmd_max_time`.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *conf.cast::<LocConf>()) };
    const NAME: &str = "intermission_release_window";
    if lcf.release_window != UNSET_COUNT {
        return conf_error(cf, NAME, "is duplicate");
    }
    let arg = arg1(cf);
    match (arg, count(arg)) {
        (b"off", _) => lcf.release_window = 0,
        (_, Some(n)) if n <= MAX_WINDOW => lcf.release_window = n,
        _ => {
            let msg = format!(
                "has an invalid value \"{}\": use off or 1 to {MAX_WINDOW}",
                printable(arg)
            );
            return conf_error(cf, NAME, &msg);
        }
    }
    NGX_CONF_OK
}

/// The largest `intermission_release_window`: a worker's turns are counted in 32 bits.
const MAX_WINDOW: u64 = 100_000;

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

/// Logs a configuration error that names the directive, and fails the configuration.
fn conf_error(cf: &mut ngx_conf_t, directive: &str, msg: &str) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "\"{}\" directive {}", directive, msg);
    NGX_CONF_ERROR
}
