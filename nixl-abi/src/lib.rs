//! `libplugin_MEMKV.so`: the MemKV backend plugin for NIXL 1.x.
//!
//! NIXL loads the .so, calls [`nixl_plugin_init`] and drives the engine defined by the C++ shim
//! (`src/shim.cpp`, over our own ABI declaration `include/nixl_abi.h`). The shim turns NIXL's C++
//! arguments into plain C and calls back into Rust through the [`ffi::RustApi`] table handed to it
//! here, so the library exports only `nixl_plugin_init` and `nixl_plugin_fini`. Every entry point
//! catches panics; no unwinding crosses into C++.
//!
//! Backend semantics (OBJ_SEG-shaped, like NIXL's own OBJ plugin): see `docs/nixl-plugin.md`.
#![allow(non_snake_case)] // the library must be named plugin_MEMKV for NIXL to find it

pub mod engine;
pub mod ffi;
pub mod plan;

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use engine::{Engine, Reg, Request};
use ffi::{Blob, Desc, Kv, RustApi, status};

/// The backend name: NIXL's `create_backend("MEMKV")` and the file name `libplugin_MEMKV.so`.
pub const BACKEND_NAME: &str = "MEMKV";

/// Runs `f`, turning a panic into `fallback` (the panic hook has already printed it).
fn guarded<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        eprintln!("MEMKV plugin: internal error in {what}; the operation failed");
        fallback
    })
}

/// The params `get_plugin_params("MEMKV")` lists: every client setting with its default (empty
/// for the required ones).
pub fn plugin_params() -> Vec<(&'static str, &'static str)> {
    memkv::config::params_for(memkv::config::Role::Client).map(|p| (p.key, p.default.unwrap_or(""))).collect()
}

fn api() -> &'static RustApi {
    static API: OnceLock<RustApi> = OnceLock::new();
    API.get_or_init(|| {
        let options: Vec<Kv> = plugin_params()
            .into_iter()
            .map(|(k, v)| Kv { key: k.as_ptr().cast(), key_len: k.len(), value: v.as_ptr().cast(), value_len: v.len() })
            .collect();
        let options: &'static [Kv] = Box::leak(options.into_boxed_slice());
        RustApi {
            name: c"MEMKV".as_ptr(),
            version: c"0.1.0".as_ptr(),
            options: options.as_ptr(),
            n_options: options.len(),
            engine_create,
            engine_destroy,
            register_mem,
            deregister_mem,
            prep_xfer,
            post_xfer,
            check_xfer,
            release_req,
            query_mem,
        }
    })
}

/// NIXL's entry point: returns the `nixlBackendPlugin` (static storage; safe to call repeatedly).
#[unsafe(no_mangle)]
pub extern "C" fn nixl_plugin_init() -> *mut c_void {
    guarded("nixl_plugin_init", std::ptr::null_mut(), || {
        // SAFETY: the table is 'static and fully initialised.
        unsafe { ffi::memkv_shim_plugin(api()) }
    })
}

/// NIXL's exit hook. Engines are destroyed by NIXL before this; nothing is left to free.
#[unsafe(no_mangle)]
pub extern "C" fn nixl_plugin_fini() {}

fn write_err(buf: *mut c_char, cap: usize, msg: &str) {
    if buf.is_null() || cap == 0 {
        return;
    }
    let n = msg.len().min(cap - 1);
    // SAFETY: the shim passes a buffer of `cap` bytes; we write at most cap-1 plus the NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

unsafe extern "C" fn engine_create(
    agent: *const c_char,
    agent_len: usize,
    params: *const Kv,
    n_params: usize,
    err: *mut c_char,
    err_cap: usize,
) -> *mut c_void {
    guarded("create_backend", std::ptr::null_mut(), || {
        // SAFETY: the shim passes the agent name's bytes and the params array it owns.
        let (agent, params) = unsafe { (ffi::bytes(agent, agent_len), ffi::slice(params, n_params)) };
        let agent = String::from_utf8_lossy(agent);
        let mut explicit = BTreeMap::new();
        for kv in params {
            // SAFETY: each entry points at a std::string's bytes owned by NIXL for this call.
            let (k, v) = unsafe { (ffi::bytes(kv.key, kv.key_len), ffi::bytes(kv.value, kv.value_len)) };
            explicit.insert(String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned());
        }
        match Engine::create(&agent, &explicit) {
            Ok(e) => Box::into_raw(Box::new(e)).cast(),
            Err(why) => {
                write_err(err, err_cap, &why);
                std::ptr::null_mut()
            }
        }
    })
}

/// # Safety
/// `p` must be an engine pointer from `engine_create` that is still live.
unsafe fn engine<'a>(p: *mut c_void) -> &'a Engine {
    // SAFETY: guaranteed by the caller.
    unsafe { &*p.cast::<Engine>() }
}

unsafe extern "C" fn engine_destroy(p: *mut c_void) {
    guarded("destroy_engine", (), || {
        if !p.is_null() {
            // SAFETY: created by engine_create; NIXL destroys each engine once.
            drop(unsafe { Box::from_raw(p.cast::<Engine>()) });
        }
    })
}

unsafe extern "C" fn register_mem(p: *mut c_void, mem_type: i32, desc: *const Blob, out: *mut *mut c_void) -> i32 {
    guarded("registerMem", status::ERR_UNKNOWN, || {
        // SAFETY: live engine; `desc` and `out` point at the shim's locals.
        let (e, d) = unsafe { (engine(p), &*desc) };
        // SAFETY: metaInfo bytes of the NIXL descriptor, valid for this call.
        let meta = unsafe { ffi::bytes(d.meta, d.meta_len) };
        match e.register(mem_type, d.addr, d.len, d.dev_id, meta) {
            Ok(reg) => {
                // SAFETY: `out` is the shim's out-pointer.
                unsafe { *out = Box::into_raw(reg).cast() };
                status::SUCCESS
            }
            Err(code) => code,
        }
    })
}

unsafe extern "C" fn deregister_mem(p: *mut c_void, obj: *mut c_void) {
    guarded("deregisterMem", (), || {
        if !obj.is_null() {
            // SAFETY: live engine; `obj` was created by register_mem and the shim deregisters
            // each once.
            unsafe { engine(p).deregister(*Box::from_raw(obj.cast::<Reg>())) };
        }
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn prep_xfer(
    p: *mut c_void,
    op: i32,
    local_type: i32,
    local: *const Desc,
    n_local: usize,
    remote_type: i32,
    remote: *const Desc,
    n_remote: usize,
    has_notif: i32,
    out: *mut *mut c_void,
) -> i32 {
    guarded("prepXfer", status::ERR_UNKNOWN, || {
        // SAFETY: live engine; the arrays are the shim's vectors, valid for this call.
        let (e, l, r) = unsafe { (engine(p), ffi::slice(local, n_local), ffi::slice(remote, n_remote)) };
        match e.prep(op, local_type, l, remote_type, r, has_notif != 0) {
            Ok(req) => {
                // SAFETY: `out` is the shim's out-pointer.
                unsafe { *out = Box::into_raw(req).cast() };
                status::SUCCESS
            }
            Err(code) => code,
        }
    })
}

/// # Safety
/// `r` must be a request pointer from `prep_xfer` that is still live.
unsafe fn request<'a>(r: *mut c_void) -> &'a Request {
    // SAFETY: guaranteed by the caller.
    unsafe { &*r.cast::<Request>() }
}

unsafe extern "C" fn post_xfer(p: *mut c_void, r: *mut c_void) -> i32 {
    // SAFETY: live engine and request (NIXL posts only handles it holds).
    guarded("postXfer", status::ERR_UNKNOWN, || unsafe { engine(p).post(request(r)) })
}

unsafe extern "C" fn check_xfer(p: *mut c_void, r: *mut c_void) -> i32 {
    // SAFETY: as for post_xfer.
    guarded("checkXfer", status::ERR_UNKNOWN, || unsafe { engine(p).check(request(r)) })
}

unsafe extern "C" fn release_req(p: *mut c_void, r: *mut c_void) -> i32 {
    guarded("releaseReqH", status::ERR_UNKNOWN, || {
        // SAFETY: as for post_xfer; on success the request is freed exactly once.
        unsafe {
            if !engine(p).release(request(r)) {
                return status::ERR_BACKEND;
            }
            drop(Box::from_raw(r.cast::<Request>()));
        }
        status::SUCCESS
    })
}

unsafe extern "C" fn query_mem(p: *mut c_void, descs: *const Blob, n: usize, sizes: *mut i64) -> i32 {
    guarded("queryMem", status::ERR_UNKNOWN, || {
        if n == 0 {
            return status::SUCCESS;
        }
        // SAFETY: live engine; `descs` and `sizes` are the shim's arrays of `n` entries.
        let (e, descs, sizes) = unsafe { (engine(p), ffi::slice(descs, n), std::slice::from_raw_parts_mut(sizes, n)) };
        let keys = descs
            .iter()
            // SAFETY: metaInfo bytes of NIXL's descriptors, valid for this call.
            .map(|d| engine::object_key(unsafe { ffi::bytes(d.meta, d.meta_len) }, d.dev_id))
            .collect();
        match e.query(keys) {
            Ok(found) => {
                for (s, f) in sizes.iter_mut().zip(found) {
                    *s = f.map_or(-1, |v| v as i64);
                }
                status::SUCCESS
            }
            Err(code) => code,
        }
    })
}
