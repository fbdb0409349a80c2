//! The C boundary with the shim: the Rust mirror of `include/memkv_nixl.h`, and NIXL's numbers.

use std::ffi::{c_char, c_void};

/// `memkv_desc`: a transfer descriptor plus the Rust object of an OBJ_SEG registration.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// Local: host address. OBJ_SEG: offset inside the object.
    pub addr: u64,
    /// Byte count.
    pub len: u64,
    /// NIXL devId.
    pub dev_id: u64,
    /// `*const Reg` of the descriptor's registration (null where NIXL has none).
    pub obj: *mut c_void,
}

/// `memkv_blob`: a registration descriptor with its metaInfo.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Blob {
    /// Address (OBJ_SEG: start of the range transfers may use).
    pub addr: u64,
    /// Length.
    pub len: u64,
    /// NIXL devId.
    pub dev_id: u64,
    /// metaInfo bytes (not NUL-terminated).
    pub meta: *const c_char,
    /// metaInfo length.
    pub meta_len: usize,
}

/// `memkv_kv`: one key/value string pair.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Kv {
    /// Key bytes.
    pub key: *const c_char,
    /// Key length.
    pub key_len: usize,
    /// Value bytes.
    pub value: *const c_char,
    /// Value length.
    pub value_len: usize,
}

/// `memkv_rust_api`: what the shim calls.
#[repr(C)]
pub struct RustApi {
    /// NUL-terminated backend name.
    pub name: *const c_char,
    /// NUL-terminated plugin version.
    pub version: *const c_char,
    /// Advertised params with defaults.
    pub options: *const Kv,
    /// Number of `options`.
    pub n_options: usize,
    /// See the header.
    pub engine_create: unsafe extern "C" fn(*const c_char, usize, *const Kv, usize, *mut c_char, usize) -> *mut c_void,
    /// See the header.
    pub engine_destroy: unsafe extern "C" fn(*mut c_void),
    /// See the header.
    pub register_mem: unsafe extern "C" fn(*mut c_void, i32, *const Blob, *mut *mut c_void) -> i32,
    /// See the header.
    pub deregister_mem: unsafe extern "C" fn(*mut c_void, *mut c_void),
    /// See the header.
    #[allow(clippy::type_complexity)]
    pub prep_xfer: unsafe extern "C" fn(
        *mut c_void,
        i32,
        i32,
        *const Desc,
        usize,
        i32,
        *const Desc,
        usize,
        i32,
        *mut *mut c_void,
    ) -> i32,
    /// See the header.
    pub post_xfer: unsafe extern "C" fn(*mut c_void, *mut c_void) -> i32,
    /// See the header.
    pub check_xfer: unsafe extern "C" fn(*mut c_void, *mut c_void) -> i32,
    /// See the header.
    pub release_req: unsafe extern "C" fn(*mut c_void, *mut c_void) -> i32,
    /// See the header.
    pub query_mem: unsafe extern "C" fn(*mut c_void, *const Blob, usize, *mut i64) -> i32,
}

// SAFETY: the table only points at 'static data (string literals and a leaked options array) and
// at functions; nothing in it is ever mutated.
unsafe impl Sync for RustApi {}
// SAFETY: as above.
unsafe impl Send for RustApi {}

/// `nixl_status_t` values.
pub mod status {
    /// In progress: poll again.
    pub const IN_PROG: i32 = 1;
    /// Done.
    pub const SUCCESS: i32 = 0;
    /// Bad argument.
    pub const ERR_INVALID_PARAM: i32 = -2;
    /// Backend failure.
    pub const ERR_BACKEND: i32 = -3;
    /// Object not found.
    pub const ERR_NOT_FOUND: i32 = -4;
    /// Sizes do not match.
    pub const ERR_MISMATCH: i32 = -5;
    /// Request still running (repost while in progress).
    pub const ERR_REPOST_ACTIVE: i32 = -7;
    /// Internal error (a caught panic).
    pub const ERR_UNKNOWN: i32 = -8;
    /// Not supported by this backend / build.
    pub const ERR_NOT_SUPPORTED: i32 = -9;
}

/// `nixl_mem_t` values.
pub mod mem {
    /// Host memory.
    pub const DRAM: i32 = 0;
    /// GPU memory.
    pub const VRAM: i32 = 1;
    /// Objects (the MemKV store).
    pub const OBJ: i32 = 3;

    /// NIXL's name for a memory type, for messages.
    pub fn name(t: i32) -> &'static str {
        match t {
            0 => "DRAM_SEG",
            1 => "VRAM_SEG",
            2 => "BLK_SEG",
            3 => "OBJ_SEG",
            4 => "FILE_SEG",
            _ => "an unknown memory type",
        }
    }
}

/// `nixl_xfer_op_t` values.
pub mod op {
    /// Object → local.
    pub const READ: i32 = 0;
    /// Local → object.
    pub const WRITE: i32 = 1;
}

unsafe extern "C" {
    /// Defined in shim.cpp: stores the table and returns the `nixlBackendPlugin`.
    pub fn memkv_shim_plugin(api: *const RustApi) -> *mut c_void;
}

/// Bytes from a C pointer and length (empty for null).
///
/// # Safety
/// `p` must point at `len` readable bytes that outlive the returned slice.
pub unsafe fn bytes<'a>(p: *const c_char, len: usize) -> &'a [u8] {
    if p.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller guarantees `p` points at `len` readable bytes.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

/// A slice from a C array pointer and count (empty for null).
///
/// # Safety
/// `p` must point at `n` valid `T`s that outlive the returned slice.
pub unsafe fn slice<'a, T>(p: *const T, n: usize) -> &'a [T] {
    if p.is_null() || n == 0 {
        return &[];
    }
    // SAFETY: the caller guarantees `p` points at `n` valid elements.
    unsafe { std::slice::from_raw_parts(p, n) }
}
