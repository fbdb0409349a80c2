//! The CUDA driver, loaded at run time: pointer classification, dma-buf export, pinned host
//! memory, device buffers, streams and events. Everything is gated on [`cuda`], which answers
//! [`MemError::CudaUnavailable`] on hosts without `libcuda.so` (cudarc would panic instead).
//!
//! Every call makes the primary context of the GPU it concerns current on the calling thread
//! first, so any thread (NIXL's, the I/O runtime's) may call in.

use std::ffi::{CStr, c_void};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::OnceLock;

use cudarc::driver::sys;

use super::MemError;

/// What the driver says about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtrInfo {
    /// Device memory (as opposed to host memory the driver knows, or memory it does not).
    pub device: bool,
    /// The GPU that owns it.
    pub ordinal: i32,
    /// Start of the allocation that holds the address.
    pub base: u64,
    /// Size of that allocation.
    pub size: u64,
    /// The allocation's id: changes when the address is freed and reused.
    pub buffer_id: u64,
}

/// The loaded driver, with the primary context of every GPU.
#[derive(Debug)]
pub struct Cuda {
    contexts: Vec<usize>,
}

// SAFETY: CUcontext handles are process-wide and may be made current on any thread.
unsafe impl Send for Cuda {}
// SAFETY: as above; the handles are only read after init.
unsafe impl Sync for Cuda {}

static CUDA: OnceLock<Result<Cuda, String>> = OnceLock::new();

/// The driver, loaded and initialised once per process; the error says why it is unusable.
pub fn cuda() -> Result<&'static Cuda, MemError> {
    CUDA.get_or_init(Cuda::load).as_ref().map_err(|e| MemError::CudaUnavailable(e.clone()))
}

/// The driver's name for an error code.
fn err_text(r: sys::CUresult) -> String {
    let mut s: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: only called once the library is loaded; the string is static in the driver.
    if unsafe { sys::cuGetErrorString(r, &mut s) } == sys::CUresult::CUDA_SUCCESS && !s.is_null() {
        // SAFETY: a NUL-terminated static string from the driver.
        return format!("{r:?}: {}", unsafe { CStr::from_ptr(s) }.to_string_lossy());
    }
    format!("{r:?}")
}

fn check(r: sys::CUresult, what: &str) -> Result<(), String> {
    if r == sys::CUresult::CUDA_SUCCESS { Ok(()) } else { Err(format!("{what} failed: {}", err_text(r))) }
}

impl Cuda {
    fn load() -> Result<Self, String> {
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err("the CUDA driver library (libcuda.so.1) is not loadable on this host".into());
        }
        // SAFETY: the library is present; cuInit is the first call any program makes.
        check(unsafe { sys::cuInit(0) }, "cuInit")?;
        let mut n = 0;
        // SAFETY: out-pointer to a local.
        check(unsafe { sys::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount")?;
        if n <= 0 {
            return Err("the CUDA driver sees no GPU".into());
        }
        let mut contexts = Vec::with_capacity(n as usize);
        for i in 0..n {
            let mut dev = 0;
            let mut ctx: sys::CUcontext = std::ptr::null_mut();
            // SAFETY: out-pointers to locals; `i` is below the device count.
            unsafe {
                check(sys::cuDeviceGet(&mut dev, i), "cuDeviceGet")?;
                check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
            }
            contexts.push(ctx as usize);
        }
        Ok(Self { contexts })
    }

    /// Number of GPUs the process sees.
    pub fn device_count(&self) -> usize {
        self.contexts.len()
    }

    /// Makes GPU `ordinal`'s primary context current on this thread.
    pub fn bind(&self, ordinal: i32) -> Result<(), MemError> {
        let ctx = *usize::try_from(ordinal)
            .ok()
            .and_then(|i| self.contexts.get(i))
            .ok_or_else(|| MemError::Cuda(format!("no GPU {ordinal}: this process sees {}", self.contexts.len())))?;
        // SAFETY: a primary context retained at load and never released.
        check(unsafe { sys::cuCtxSetCurrent(ctx as sys::CUcontext) }, "cuCtxSetCurrent").map_err(MemError::Cuda)
    }

    fn attr<T: Default>(&self, attr: sys::CUpointer_attribute, addr: u64) -> Result<T, sys::CUresult> {
        let mut v = T::default();
        // SAFETY: `v` has the size the attribute writes (u32 for MEMORY_TYPE / ORDINAL, u64 for
        // BUFFER_ID), as chosen by the callers below.
        let r = unsafe { sys::cuPointerGetAttribute((&raw mut v).cast::<c_void>(), attr, addr) };
        if r == sys::CUresult::CUDA_SUCCESS { Ok(v) } else { Err(r) }
    }

    /// Classifies `addr`. Memory the driver does not know (plain `malloc`) is `device: false`.
    pub fn pointer_info(&self, addr: u64) -> Result<PtrInfo, MemError> {
        self.bind(0)?;
        use sys::CUpointer_attribute::*;
        let mem_type: u32 = match self.attr(CU_POINTER_ATTRIBUTE_MEMORY_TYPE, addr) {
            Ok(t) => t,
            // Not a CUDA allocation at all.
            Err(sys::CUresult::CUDA_ERROR_INVALID_VALUE) => {
                return Ok(PtrInfo { device: false, ordinal: -1, base: addr, size: 0, buffer_id: 0 });
            }
            Err(r) => {
                return Err(MemError::Cuda(format!("cuPointerGetAttribute(MEMORY_TYPE) failed: {}", err_text(r))));
            }
        };
        let device = mem_type == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32;
        let fail = |what: &str, r| MemError::Cuda(format!("cuPointerGetAttribute({what}) failed: {}", err_text(r)));
        let ordinal: i32 =
            self.attr(CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, addr).map_err(|r| fail("DEVICE_ORDINAL", r))?;
        let buffer_id: u64 = self.attr(CU_POINTER_ATTRIBUTE_BUFFER_ID, addr).map_err(|r| fail("BUFFER_ID", r))?;
        let (mut base, mut size) = (0u64, 0usize);
        if device {
            self.bind(ordinal)?;
            // SAFETY: out-pointers to locals; `addr` is a device address the driver knows.
            check(unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, addr) }, "cuMemGetAddressRange")
                .map_err(MemError::Cuda)?;
        }
        Ok(PtrInfo { device, ordinal, base, size: size as u64, buffer_id })
    }

    /// The PCI bus id of GPU `ordinal` (`0000:17:00.0`).
    pub fn bus_id(&self, ordinal: i32) -> Result<String, MemError> {
        let mut buf = [0 as std::ffi::c_char; 32];
        let mut dev = 0;
        // SAFETY: out-pointers to locals; the buffer's length is passed.
        unsafe {
            check(sys::cuDeviceGet(&mut dev, ordinal), "cuDeviceGet").map_err(MemError::Cuda)?;
            check(sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as i32, dev), "cuDeviceGetPCIBusId")
                .map_err(MemError::Cuda)?;
        }
        // SAFETY: the driver wrote a NUL-terminated string into the buffer.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        crate::config::normalize_bdf(&s).map_err(MemError::Cuda)
    }

    /// Exports `[base, base + size)` of device memory (a whole allocation, see
    /// [`PtrInfo::base`]) as a dma-buf file descriptor for `ibv_reg_dmabuf_mr`.
    pub fn export_dmabuf(&self, ordinal: i32, base: u64, size: u64) -> Result<OwnedFd, MemError> {
        // SAFETY: looks a symbol up without calling it (older drivers lack it; cudarc would panic).
        let present = unsafe { sys::culib().get::<unsafe extern "C" fn()>(b"cuMemGetHandleForAddressRange") }.is_ok();
        if !present {
            return Err(MemError::Cuda("the driver has no cuMemGetHandleForAddressRange (CUDA < 11.7)".into()));
        }
        self.bind(ordinal)?;
        let mut fd: i32 = -1;
        // The handle type DMA_BUF_FD writes an int; flags 0 (the PCIe mapping flag fails on some
        // GPUs).
        check(
            // SAFETY: `fd` is a local int, the range is a device allocation from pointer_info.
            unsafe {
                sys::cuMemGetHandleForAddressRange(
                    (&raw mut fd).cast::<c_void>(),
                    base,
                    size as usize,
                    sys::CUmemRangeHandleType::CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD,
                    0,
                )
            },
            "cuMemGetHandleForAddressRange(DMA_BUF_FD)",
        )
        .map_err(MemError::Cuda)?;
        // SAFETY: the driver returned a new descriptor that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `len` bytes of page-locked host memory, portable to every context.
    pub fn alloc_pinned(&self, len: usize) -> Result<PinnedHost, MemError> {
        self.bind(0)?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; PORTABLE (not write-combined: the CPU reads slots).
        check(unsafe { sys::cuMemHostAlloc(&mut p, len, sys::CU_MEMHOSTALLOC_PORTABLE) }, "cuMemHostAlloc")
            .map_err(|e| MemError::Cuda(format!("{e} ({len} bytes of pinned memory; lower MEMKV_STAGING_SIZE_MB)")))?;
        Ok(PinnedHost { ptr: p.cast(), len })
    }

    /// `len` bytes of memory on GPU `ordinal` (tests and benchmarks).
    pub fn alloc_device(&self, ordinal: i32, len: usize) -> Result<DeviceBuffer, MemError> {
        self.bind(ordinal)?;
        let mut d: sys::CUdeviceptr = 0;
        // SAFETY: out-pointer to a local.
        check(unsafe { sys::cuMemAlloc_v2(&mut d, len) }, "cuMemAlloc").map_err(MemError::Cuda)?;
        Ok(DeviceBuffer { ordinal, ptr: d, len })
    }

    /// Blocking copy device → host (tests and benchmarks).
    pub fn copy_to_host(&self, ordinal: i32, dst: &mut [u8], src: u64) -> Result<(), MemError> {
        self.bind(ordinal)?;
        // SAFETY: `dst` is a live host slice of the length copied; `src` is device memory of at
        // least that length (the caller's contract, checked by the driver).
        check(unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len()) }, "cuMemcpyDtoH")
            .map_err(MemError::Cuda)
    }

    /// Blocking copy host → device (tests and benchmarks).
    pub fn copy_to_device(&self, ordinal: i32, dst: u64, src: &[u8]) -> Result<(), MemError> {
        self.bind(ordinal)?;
        // SAFETY: as for copy_to_host, the other way round.
        check(unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()) }, "cuMemcpyHtoD")
            .map_err(MemError::Cuda)
    }

    /// A non-blocking stream on GPU `ordinal`.
    pub fn stream(&self, ordinal: i32) -> Result<Stream, MemError> {
        self.bind(ordinal)?;
        let mut s: sys::CUstream = std::ptr::null_mut();
        let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
        check(
            // SAFETY: out-pointer to a local.
            unsafe { sys::cuStreamCreate(&mut s, flags) },
            "cuStreamCreate",
        )
        .map_err(MemError::Cuda)?;
        Ok(Stream { ordinal, raw: s as usize })
    }
}

/// Page-locked host memory from `cuMemHostAlloc`; freed on drop.
#[derive(Debug)]
pub struct PinnedHost {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory, owned by this value.
unsafe impl Send for PinnedHost {}
// SAFETY: shared access hands out raw pointers only; writers coordinate through the slot pool.
unsafe impl Sync for PinnedHost {}

impl PinnedHost {
    /// Its start.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Its size.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: cuMemHostAlloc memory is page-locked and registered with the driver, stays at one
// address for the value's life, and only the slot pool that owns it hands out access.
unsafe impl super::staging::SlotMemory for PinnedHost {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// The staging copy engine of one GPU: copies run in order on its own stream; an event after
/// each says when it finished.
#[derive(Debug)]
pub struct CudaCopy {
    stream: Stream,
}

impl CudaCopy {
    /// A copy engine with a new stream on GPU `ordinal`.
    pub fn new(ordinal: i32) -> Result<Self, MemError> {
        Ok(Self { stream: cuda()?.stream(ordinal)? })
    }
}

fn copy_failed(dir: super::staging::Direction, len: usize, e: MemError) -> super::staging::StagingError {
    super::staging::StagingError::Copy { direction: dir, len, message: e.to_string() }
}

// SAFETY: `start` queues the copy and an event on the stream (Err: nothing was queued, or the
// queued copy is abandoned by a failed context); `poll_done` is cuEventQuery, which never blocks
// and reports done only after the copy's writes are complete.
unsafe impl super::staging::CopyEngine for CudaCopy {
    type Ticket = Event;

    unsafe fn start(
        &self,
        dir: super::staging::Direction,
        dst: u64,
        src: u64,
        len: usize,
    ) -> Result<Event, super::staging::StagingError> {
        use super::staging::Direction::*;
        // SAFETY: the pipeline's contract (see CopyEngine::start) covers both ranges.
        let r = unsafe {
            match dir {
                DeviceToHost => self.stream.copy(true, dst as *mut u8, src, len),
                HostToDevice => self.stream.copy(false, src as *mut u8, dst, len),
            }
        };
        r.map_err(|e| copy_failed(dir, len, e))
    }

    fn poll_done(&self, ticket: &Event) -> Result<bool, super::staging::StagingError> {
        ticket.is_done().map_err(|e| copy_failed(super::staging::Direction::DeviceToHost, 0, e))
    }
}

/// Makes GPU `ordinal`'s context current before a driver call that needs one, where the driver
/// is loaded (a value of this module exists only then).
fn bind_for_drop(ordinal: i32) {
    if let Ok(c) = cuda() {
        let _ = c.bind(ordinal);
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        bind_for_drop(0);
        // SAFETY: allocated by cuMemHostAlloc, freed once.
        unsafe { sys::cuMemFreeHost(self.ptr.cast()) };
    }
}

/// Device memory from `cuMemAlloc`; freed on drop.
#[derive(Debug)]
pub struct DeviceBuffer {
    ordinal: i32,
    ptr: u64,
    len: usize,
}

impl DeviceBuffer {
    /// Its device address.
    pub fn addr(&self) -> u64 {
        self.ptr
    }

    /// Its size.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its GPU.
    pub fn ordinal(&self) -> i32 {
        self.ordinal
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        bind_for_drop(self.ordinal);
        // SAFETY: allocated by cuMemAlloc, freed once.
        unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// A CUDA stream: copies queued on it run in order, asynchronously to the host.
#[derive(Debug)]
pub struct Stream {
    ordinal: i32,
    raw: usize,
}

/// A recorded event: done when the stream reached it.
#[derive(Debug)]
pub struct Event {
    ordinal: i32,
    raw: usize,
}

// SAFETY: stream and event handles may be used from any thread once their context is current.
unsafe impl Send for Event {}
// SAFETY: as above; `copy` binds the stream's context first.
unsafe impl Send for Stream {}
// SAFETY: as above; the driver serialises work queued on one stream.
unsafe impl Sync for Stream {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Stream {
    /// Queues a copy of `len` bytes (device → host when `to_host`, else host → device) and
    /// records an event after it.
    ///
    /// # Safety
    /// `host` must stay valid (and untouched by the CPU) and `dev` must be device memory of at
    /// least `len` bytes until the returned event is done.
    pub unsafe fn copy(&self, to_host: bool, host: *mut u8, dev: u64, len: usize) -> Result<Event, MemError> {
        let c = cuda()?;
        c.bind(self.ordinal)?;
        let s = self.raw as sys::CUstream;
        // SAFETY: guaranteed by the caller; the stream lives as long as self.
        let r = unsafe {
            if to_host {
                sys::cuMemcpyDtoHAsync_v2(host.cast(), dev, len, s)
            } else {
                sys::cuMemcpyHtoDAsync_v2(dev, host.cast_const().cast(), len, s)
            }
        };
        check(r, if to_host { "cuMemcpyDtoHAsync" } else { "cuMemcpyHtoDAsync" }).map_err(MemError::Cuda)?;
        let mut e: sys::CUevent = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; the event is recorded on our stream.
        unsafe {
            check(sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32), "cuEventCreate")
                .map_err(MemError::Cuda)?;
            check(sys::cuEventRecord(e, s), "cuEventRecord").map_err(MemError::Cuda)?;
        }
        Ok(Event { ordinal: self.ordinal, raw: e as usize })
    }
}

impl Event {
    /// Whether the work before it finished; never blocks.
    pub fn is_done(&self) -> Result<bool, MemError> {
        // The polling thread may be one that never touched this GPU.
        cuda()?.bind(self.ordinal)?;
        // SAFETY: a live event handle.
        match unsafe { sys::cuEventQuery(self.raw as sys::CUevent) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            r => Err(MemError::Cuda(format!("a staging copy failed: {}", err_text(r)))),
        }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        bind_for_drop(self.ordinal);
        // SAFETY: created by cuEventCreate, destroyed once (a pending event is released by the
        // driver when the stream reaches it).
        unsafe { sys::cuEventDestroy_v2(self.raw as sys::CUevent) };
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        bind_for_drop(self.ordinal);
        // SAFETY: created by cuStreamCreate, destroyed once.
        unsafe { sys::cuStreamDestroy_v2(self.raw as sys::CUstream) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_every_entry_point_is_a_clean_error() {
        // SAFETY: only probes whether the library can be opened.
        if unsafe { sys::is_culib_present() } {
            return; // a GPU host: gpu-tests/ covers it
        }
        let e = cuda().unwrap_err();
        assert!(matches!(e, MemError::CudaUnavailable(_)), "{e:?}");
        assert!(e.to_string().contains("libcuda.so.1"), "{e}");
    }
}
