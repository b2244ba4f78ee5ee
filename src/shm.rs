//! The shared zone: created by the module itself, one per nginx instance, and kept by nginx
//! across `nginx -s reload` because its name, size and tag do not change.

use core::ffi::c_void;
use core::ptr;

use intermission_core::shared::Shared;
use ngx::ffi::{
    ngx_conf_t, ngx_shared_memory_add, ngx_shm_zone_init_pt, ngx_shm_zone_t, ngx_shmtx_lock,
    ngx_shmtx_t, ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_pool_t, ngx_str_t,
};
use ngx::http::HttpModule;
use ngx::ngx_string;

use crate::conf::MainConf;
use crate::ngx_util::process_alive;
use crate::Module;

/// A name no other module uses: `limit_req_zone zone=intermission` must stay possible.
const ZONE_NAME: ngx_str_t = ngx_string!("ngx_http_intermission_module");
/// The block, plus room for the slab allocator's own page table.
const ZONE_SIZE: usize = (Shared::SIZE + 64 * 1024).next_multiple_of(4096);

/// Declares the zone; nginx maps it (or adopts the previous cycle's) after the configuration
/// and calls `init` (the module's, which calls [`init`] here).
pub fn add(cf: &mut ngx_conf_t, mcf: &mut MainConf, init: ngx_shm_zone_init_pt) -> Result<(), ()> {
    let mut name = ZONE_NAME;
    let tag = ptr::from_ref(Module::module()).cast_mut().cast::<c_void>();
    // SAFETY: called while nginx reads the configuration, with its context.
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, ZONE_SIZE, tag) };
    // SAFETY: null or a zone owned by the cycle being configured.
    let Some(z) = (unsafe { zone.as_mut() }) else {
        return Err(());
    };
    z.init = init;
    z.data = ptr::from_mut(mcf).cast();
    mcf.zone = zone;
    mcf.cycle = cf.cycle;
    Ok(())
}

/// Maps the state into this configuration: adopts the block a previous configuration made
/// (reload: nginx passes the old zone's `data`, non-null), or makes it, then registers the
/// configured scopes. Runs in the master (and in `nginx -t`), before the workers start.
/// Returns the state and whether it is new.
pub fn init(
    zone: *mut ngx_shm_zone_t,
    data: *mut c_void,
) -> Result<(&'static Shared, bool), String> {
    // SAFETY: nginx passes the zone declared in `add`, whose `data` is this cycle's main
    // configuration; the zone's memory starts with the slab pool nginx initialized.
    let (pool, mcf) = unsafe {
        let zone = &mut *zone;
        (zone.shm.addr.cast::<ngx_slab_pool_t>(), &mut *zone.data.cast::<MainConf>())
    };
    // SAFETY: `pool` is the zone's slab pool; its `data` is the block when the zone is reused.
    let adopted = unsafe { (*pool).data.cast::<Shared>() };
    let reused = !data.is_null() && !adopted.is_null();
    let shared = if reused {
        adopted.cast_const()
    } else {
        alloc(pool).ok_or("no room for state in zone")?
    };
    // SAFETY: `shared` points to a block in the zone, made just now or by an earlier cycle,
    // mapped for the life of every process.
    let sh: &'static Shared = unsafe { &*shared };
    if !sh.is_initialized() {
        return Err("the shared zone has another layout".into());
    }
    let names: Vec<&str> = (0..mcf.scope_count()).map(|i| mcf.scope_name(i)).collect();
    // Workers of the previous configuration run meanwhile: registration is serialized with
    // their claims, reaps and state changes.
    // SAFETY: the pool's mutex, in the zone every process maps.
    let idx =
        with_mutex(unsafe { &mut (*pool).mutex }, || sh.register_config(&names, process_alive))?;
    for (i, idx) in idx.into_iter().enumerate() {
        mcf.shm_index[i] = idx as u16;
    }
    mcf.shared = shared;
    Ok((sh, !reused))
}

/// Allocates and zeroes the block in a fresh zone.
fn alloc(pool: *mut ngx_slab_pool_t) -> Option<*const Shared> {
    // SAFETY: nginx initialized the zone's start as a slab pool before calling `init_zone`;
    // the allocation is made under the pool's mutex, and zeroed before anything reads it.
    unsafe {
        ngx_shmtx_lock(&mut (*pool).mutex);
        let p = ngx_slab_alloc_locked(pool, Shared::SIZE).cast::<Shared>();
        ngx_shmtx_unlock(&mut (*pool).mutex);
        if p.is_null() {
            return None;
        }
        ptr::write_bytes(p.cast::<u8>(), 0, Shared::SIZE);
        (*p).init(generation_id());
        (*pool).data = p.cast();
        Some(p)
    }
}

/// An id for a new zone, different for every nginx start and every binary of an upgrade.
fn generation_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // SAFETY: a plain system call.
    t ^ (u64::from(unsafe { libc::getpid() } as u32) << 40)
}

fn with_mutex<T>(mutex: &mut ngx_shmtx_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: a mutex of a mapped shared zone; `f` must not block or unwind (panic = abort).
    unsafe { ngx_shmtx_lock(mutex) };
    let out = f();
    // SAFETY: as above; locked just now by this process.
    unsafe { ngx_shmtx_unlock(mutex) };
    out
}

/// Runs `f` under the zone's mutex: every state change and what follows from it (the state
/// file, the release pace, slot claims and reaps) is one critical section. The mutex is the
/// slab pool's, which the master unlocks if a worker dies holding it; `f` must not block.
pub fn locked<T>(mcf: &MainConf, f: impl FnOnce() -> T) -> T {
    // SAFETY: `zone` is this cycle's zone (the caller checked `shared` is set, which implies
    // it), mapped in every worker; its start is the slab pool with its mutex.
    let mutex = unsafe { &mut (*(*mcf.zone).shm.addr.cast::<ngx_slab_pool_t>()).mutex };
    with_mutex(mutex, f)
}
