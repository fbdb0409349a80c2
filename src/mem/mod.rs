//! Local memory: the registry of regions an application registered (NIXL `registerMem` of
//! DRAM_SEG / VRAM_SEG), how each one is reached (host memory, GPU memory registered with a NIC
//! through dma-buf or nvidia-peermem, or GPU memory staged through pinned host slots), the MR
//! cache of NIC registrations, and the staging slot pool.
//!
//! Registration happens at `register` time, never per transfer: a transfer resolves each of its
//! descriptors with one O(log n) MR-cache lookup ([`Registry::resolve`]). On hosts without
//! RDMA, the cache still indexes the regions (its "registration" costs nothing) so that the
//! same lookups, stats and invalidation run everywhere.
//!
//! One log line per region says which path won and why.

pub mod cache;
pub mod cuda;
pub mod metrics;
pub mod nic;
pub mod staging;

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::config::MemConfig;
use cache::{CacheStats, Entry, MrCache};
pub use cuda::PtrInfo;
use nic::{Mr, Nic};
use staging::{PoolStats, SlotPool};

/// Why memory could not be registered or resolved. Every message names the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The CUDA driver cannot be used on this host.
    #[error("GPU memory needs the CUDA driver: {0}; on this host register host memory (DRAM_SEG) instead")]
    CudaUnavailable(String),
    /// A CUDA call failed.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A VRAM registration of memory the CUDA driver does not know as device memory.
    #[error(
        "{addr:#x} (+{len} bytes) is not GPU memory (the CUDA driver does not know it as device memory); register host memory as DRAM_SEG"
    )]
    NotDevice {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A registration that runs past the GPU allocation holding its start.
    #[error(
        "{addr:#x} (+{len} bytes) runs past its GPU allocation ({base:#x}, {size} bytes); register ranges inside one cudaMalloc allocation"
    )]
    PastAllocation {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// The allocation's start.
        base: u64,
        /// The allocation's size.
        size: u64,
    },
    /// An empty range, or one that wraps around the address space.
    #[error("invalid memory range {addr:#x} (+{len} bytes): it must be non-empty and inside the address space")]
    InvalidRange {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A transfer descriptor outside every registered region.
    #[error("{addr:#x} (+{len} bytes) is not inside a registered region; register the memory first (NIXL registerMem)")]
    NotRegistered {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A NIC refused a registration.
    #[error(
        "registering {len} bytes at {addr:#x} failed: {why}; check `ulimit -l` (containers: --ulimit memlock=-1 --cap-add=IPC_LOCK)"
    )]
    Register {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// The NIC's error.
        why: String,
    },
    /// GPU memory that must be staged while staging is turned off.
    #[error(
        "GPU memory at {addr:#x} must move through staging slots ({why}), but MEMKV_STAGING_SIZE_MB=0 turns staging off; set it (e.g. 256)"
    )]
    StagingOff {
        /// Start.
        addr: u64,
        /// Why no direct path exists.
        why: String,
    },
    /// The staging pool could not be set up.
    #[error("staging: {0}")]
    Staging(String),
}

/// Where a region lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Host memory.
    Host,
    /// Memory of GPU `ordinal`.
    Device {
        /// The CUDA device ordinal.
        ordinal: i32,
    },
}

/// How transfers reach a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Host memory: sent from and received into directly (and registered with every NIC).
    Host,
    /// GPU memory registered with a NIC through a dma-buf (GPUDirect RDMA).
    Dmabuf,
    /// GPU memory registered with a NIC through nvidia-peermem (GPUDirect RDMA).
    PeerMem,
    /// GPU memory copied through pinned host staging slots.
    Staging,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Host => "host",
            Self::Dmabuf => "dmabuf",
            Self::PeerMem => "peermem",
            Self::Staging => "staging",
        })
    }
}

/// What the application declared a region to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// Host memory (NIXL DRAM_SEG).
    Dram,
    /// GPU memory (NIXL VRAM_SEG).
    Vram,
}

/// One registered region.
#[derive(Debug, PartialEq, Eq)]
pub struct Region {
    /// Start.
    pub addr: u64,
    /// Length.
    pub len: u64,
    /// Where it lives.
    pub kind: Kind,
    /// How transfers reach it.
    pub path: Path,
    /// For GPUDirect paths, the NIC it is registered with.
    pub nic: Option<String>,
    id: u64,
}

impl Region {
    /// Whether `[addr, addr + len)` lies inside.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr && addr.checked_add(len).is_some_and(|end| end <= self.addr + self.len)
    }
}

/// What the MR cache holds for a region: the region and its NIC registrations (none without
/// RDMA, and none for staged GPU memory).
#[derive(Debug)]
pub struct Registered {
    /// The region.
    pub region: Arc<Region>,
    /// One registration per NIC.
    pub mrs: Vec<Mr>,
}

/// The CUDA calls the registry needs (a fake in tests).
pub trait GpuDriver: Send + Sync {
    /// Classifies an address.
    fn pointer_info(&self, addr: u64) -> Result<PtrInfo, MemError>;
    /// Exports a device allocation as a dma-buf.
    fn export_dmabuf(&self, ordinal: i32, base: u64, size: u64) -> Result<OwnedFd, MemError>;
    /// The staging copy engine of GPU `ordinal`.
    fn copy_engine(&self, ordinal: i32) -> Result<StageEngine, MemError>;
}

/// The copy engine behind staging: a CUDA stream, or (drivers without CUDA, in tests) a host
/// worker thread.
#[derive(Debug)]
pub enum StageEngine {
    /// A CUDA stream of one GPU.
    Cuda(cuda::CudaCopy),
    /// Host memory copies.
    Host(staging::HostCopy),
}

/// A started copy of a [`StageEngine`].
#[derive(Debug)]
pub enum StageTicket {
    /// A CUDA event.
    Cuda(cuda::Event),
    /// A host copy.
    Host(staging::HostTicket),
}

// SAFETY: forwards to the engine it holds, whose promises it keeps; tickets never cross engines
// (each is matched with the variant that made it).
unsafe impl staging::CopyEngine for StageEngine {
    type Ticket = StageTicket;

    unsafe fn start(
        &self,
        dir: staging::Direction,
        dst: u64,
        src: u64,
        len: usize,
    ) -> Result<StageTicket, staging::StagingError> {
        // SAFETY: the caller's promise, passed on.
        unsafe {
            match self {
                Self::Cuda(c) => c.start(dir, dst, src, len).map(StageTicket::Cuda),
                Self::Host(h) => h.start(dir, dst, src, len).map(StageTicket::Host),
            }
        }
    }

    fn poll_done(&self, ticket: &StageTicket) -> Result<bool, staging::StagingError> {
        match (self, ticket) {
            (Self::Cuda(c), StageTicket::Cuda(t)) => c.poll_done(t),
            (Self::Host(h), StageTicket::Host(t)) => h.poll_done(t),
            _ => unreachable!("a ticket is polled on the engine that made it"),
        }
    }
}

/// The real driver, loaded at run time.
#[derive(Debug, Default, Clone, Copy)]
pub struct CudaDriver;

impl GpuDriver for CudaDriver {
    fn pointer_info(&self, addr: u64) -> Result<PtrInfo, MemError> {
        cuda::cuda()?.pointer_info(addr)
    }

    fn export_dmabuf(&self, ordinal: i32, base: u64, size: u64) -> Result<OwnedFd, MemError> {
        cuda::cuda()?.export_dmabuf(ordinal, base, size)
    }

    fn copy_engine(&self, ordinal: i32) -> Result<StageEngine, MemError> {
        cuda::CudaCopy::new(ordinal).map(StageEngine::Cuda)
    }
}

/// A registration handed to the application; give it back to [`Registry::deregister`].
#[derive(Debug)]
pub struct Handle {
    region: Arc<Region>,
}

impl Handle {
    /// The region.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }
}

/// Counters of the registry, for the metrics endpoint and the summary log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct MemStats {
    /// The MR cache.
    pub cache: CacheStats,
    /// Registered regions.
    pub regions: u64,
    /// Registered bytes of host memory.
    pub host_bytes: u64,
    /// Registered bytes of GPU memory reached through GPUDirect RDMA (dmabuf or peermem).
    pub gdr_bytes: u64,
    /// Registered bytes of GPU memory moved through staging.
    pub staged_bytes: u64,
    /// The staging pool, once allocated.
    pub staging: Option<PoolStats>,
}

/// The NIC a GPU should use, by CUDA ordinal (from `topo`).
pub type NicChooser = Box<dyn Fn(i32) -> Option<String> + Send + Sync>;

/// The registry of one client (one NIXL backend instance).
pub struct Registry {
    /// Region records by start address (several may share a start).
    regions: RwLock<BTreeMap<(u64, u64), Arc<Region>>>,
    /// Longest region, to bound the search for a container.
    longest: AtomicU64,
    next_id: AtomicU64,
    cache: MrCache<Registered>,
    nics: Vec<Arc<dyn Nic>>,
    /// Why RDMA is not used, when `nics` is empty.
    no_nic: String,
    nic_for: NicChooser,
    gpu: Box<dyn GpuDriver>,
    sysfs: PathBuf,
    staging_size: u64,
    staging_slot: u64,
    staging: Mutex<Option<Arc<SlotPool>>>,
    engines: Mutex<BTreeMap<i32, Arc<StageEngine>>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("regions", &self.regions.read().len()).field("nics", &self.nics).finish()
    }
}

impl Registry {
    /// A registry over `nics` (empty, with the reason in `no_nic`, where RDMA is unusable).
    pub fn new(
        cfg: &MemConfig,
        nics: Vec<Arc<dyn Nic>>,
        no_nic: String,
        nic_for: NicChooser,
        gpu: Box<dyn GpuDriver>,
        sysfs: PathBuf,
    ) -> Self {
        Self {
            regions: RwLock::new(BTreeMap::new()),
            longest: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            cache: MrCache::new(cfg.mr_cache_max_entries, cfg.mr_cache_max_bytes),
            nics,
            no_nic,
            nic_for,
            gpu,
            sysfs,
            staging_size: cfg.staging_size,
            staging_slot: cfg.staging_slot,
            staging: Mutex::new(None),
            engines: Mutex::new(BTreeMap::new()),
        }
    }

    /// The registry of a client with `cfg`: the NICs of `MEMKV_RDMA_DEVICES` (none with
    /// `MEMKV_TRANSPORT=tcp`, or where RDMA is unusable: one log line says why), each GPU mapped
    /// to its closest NIC, the CUDA driver loaded on first use. Error only for a named NIC that
    /// this host lacks while it has others.
    pub fn open(cfg: &crate::config::ClientConfig) -> Result<Self, MemError> {
        let root = PathBuf::from("/");
        let (nics, no_nic) = if matches!(cfg.transport, crate::config::Transport::Tcp | crate::config::Transport::Shm) {
            (Vec::new(), format!("MEMKV_TRANSPORT={}: no memory is registered with NICs", cfg.transport))
        } else {
            match nic::open(&cfg.mem.rdma_devices) {
                Ok(n) => (n, String::new()),
                Err(why) if why.starts_with("MEMKV_RDMA_DEVICES") => return Err(MemError::Staging(why)),
                Err(why) => {
                    tracing::info!(
                        "MEMKV: {why}; memory moves over shared memory (nodes on this host) or TCP, GPU memory through staging slots"
                    );
                    (Vec::new(), why)
                }
            }
        };
        let names: Vec<String> = nics.iter().map(|n| n.name().to_string()).collect();
        let nic_for = crate::topo::chooser(&root, &names, &cfg.mem.gpu_nic_map);
        Ok(Self::new(&cfg.mem, nics, no_nic, nic_for, Box::new(CudaDriver), root))
    }

    /// The NICs in use.
    pub fn nics(&self) -> &[Arc<dyn Nic>] {
        &self.nics
    }

    /// Registers `[addr, addr + len)`: records it, decides its path, and registers it with the
    /// NICs (for GPU memory: dma-buf, else nvidia-peermem, else staging).
    pub fn register(&self, addr: u64, len: u64, declared: Declared) -> Result<Handle, MemError> {
        if len == 0 || addr.checked_add(len).is_none() {
            return Err(MemError::InvalidRange { addr, len });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (region, mrs, why) = match declared {
            Declared::Dram => {
                let mrs = self.register_host(addr, len)?;
                let why = if self.nics.is_empty() { self.no_nic.clone() } else { "registered with every NIC".into() };
                (Region { addr, len, kind: Kind::Host, path: Path::Host, nic: None, id }, mrs, why)
            }
            Declared::Vram => self.register_device(addr, len, id)?,
        };
        let region = Arc::new(region);
        match region.path {
            Path::Host => {
                tracing::debug!(addr = format_args!("{addr:#x}"), len, path = %region.path, "MEMKV: registered host memory ({why})")
            }
            _ => tracing::info!(
                addr = format_args!("{addr:#x}"),
                len,
                gpu = ?region.kind,
                path = %region.path,
                nic = region.nic.as_deref().unwrap_or("-"),
                "MEMKV: registered GPU memory: {why}"
            ),
        }
        if region.path == Path::Staging {
            self.staging_pool()?;
        }
        self.regions.write().insert((addr, id), Arc::clone(&region));
        self.longest.fetch_max(len, Ordering::Relaxed);
        let entry = Registered { region: Arc::clone(&region), mrs };
        // Index it now, so that transfers find it with one lookup.
        let _ = self.cache.get_or_register(addr, len, || Ok::<_, MemError>((addr, len, entry)));
        Ok(Handle { region })
    }

    /// Drops a registration: its record goes and cached registrations over its range are
    /// invalidated (the memory may be freed next). Transfers still holding a registration keep
    /// it alive until they finish.
    pub fn deregister(&self, handle: Handle) {
        let r = handle.region;
        self.regions.write().remove(&(r.addr, r.id));
        self.cache.invalidate(r.addr, r.len);
    }

    /// The registration covering a transfer descriptor: an MR-cache hit in O(log n), or on a
    /// miss (its registration was evicted or invalidated) a new registration of the region that
    /// holds it. Error when no registered region holds it.
    pub fn resolve(&self, addr: u64, len: u64) -> Result<Arc<Entry<Registered>>, MemError> {
        if len == 0 || addr.checked_add(len).is_none() {
            return Err(MemError::InvalidRange { addr, len });
        }
        self.cache.get_or_register(addr, len, || {
            let region = self.container(addr, len).ok_or(MemError::NotRegistered { addr, len })?;
            let mrs = match region.path {
                Path::Host => self.register_host(region.addr, region.len)?,
                Path::Staging => Vec::new(),
                Path::Dmabuf | Path::PeerMem => {
                    let Kind::Device { ordinal } = region.kind else { unreachable!("GPUDirect paths are GPU memory") };
                    let nic = self.nic_named(region.nic.as_deref());
                    self.register_gdr(&nic, region.addr, region.len, ordinal, region.path)?
                }
            };
            Ok((region.addr, region.len, Registered { region, mrs }))
        })
    }

    /// The registered region that holds `[addr, addr + len)` (the newest when several do).
    fn container(&self, addr: u64, len: u64) -> Option<Arc<Region>> {
        let regions = self.regions.read();
        let lowest = addr.saturating_sub(self.longest.load(Ordering::Relaxed));
        regions.range((lowest, 0)..=(addr, u64::MAX)).rev().map(|(_, r)| r).find(|r| r.contains(addr, len)).cloned()
    }

    fn nic_named(&self, name: Option<&str>) -> Arc<dyn Nic> {
        let found = name.and_then(|n| self.nics.iter().find(|x| x.name() == n));
        Arc::clone(found.unwrap_or(&self.nics[0]))
    }

    fn register_host(&self, addr: u64, len: u64) -> Result<Vec<Mr>, MemError> {
        self.nics.iter().map(|n| n.register(addr, len).map_err(|why| MemError::Register { addr, len, why })).collect()
    }

    /// Registers GPU memory with `nic` through `path` (dma-buf: the fd is closed once the MR
    /// holds its own reference).
    fn register_gdr(
        &self,
        nic: &Arc<dyn Nic>,
        addr: u64,
        len: u64,
        ordinal: i32,
        path: Path,
    ) -> Result<Vec<Mr>, MemError> {
        let reg = |r: Result<Mr, String>| r.map(|m| vec![m]).map_err(|why| MemError::Register { addr, len, why });
        match path {
            Path::Dmabuf => {
                let info = self.gpu.pointer_info(addr)?;
                let fd = self.gpu.export_dmabuf(ordinal, info.base, info.size)?;
                reg(nic.register_dmabuf(fd.as_raw_fd(), addr - info.base, len, addr))
            }
            _ => reg(nic.register(addr, len)),
        }
    }

    /// Classifies GPU memory and picks its path: dma-buf, else nvidia-peermem, else staging.
    fn register_device(&self, addr: u64, len: u64, id: u64) -> Result<(Region, Vec<Mr>, String), MemError> {
        let info = self.gpu.pointer_info(addr)?;
        if !info.device {
            return Err(MemError::NotDevice { addr, len });
        }
        if addr + len > info.base + info.size {
            return Err(MemError::PastAllocation { addr, len, base: info.base, size: info.size });
        }
        let kind = Kind::Device { ordinal: info.ordinal };
        let staged = |why: String| -> Result<(Region, Vec<Mr>, String), MemError> {
            if self.staging_size == 0 {
                return Err(MemError::StagingOff { addr, why });
            }
            let region = Region { addr, len, kind, path: Path::Staging, nic: None, id };
            Ok((region, Vec::new(), format!("staging slots ({why})")))
        };
        if self.nics.is_empty() {
            return staged(self.no_nic.clone());
        }
        let nic = self.nic_named((self.nic_for)(info.ordinal).as_deref());
        let name = Some(nic.name().to_string());
        let dmabuf = match self.register_gdr(&nic, addr, len, info.ordinal, Path::Dmabuf) {
            Ok(mrs) => {
                let region = Region { addr, len, kind, path: Path::Dmabuf, nic: name, id };
                return Ok((region, mrs, format!("dma-buf MR on {}", nic.name())));
            }
            Err(e) => e.to_string(),
        };
        if !nic::peermem_loaded(&self.sysfs) {
            return staged(format!("dma-buf registration failed ({dmabuf}) and nvidia-peermem is not loaded"));
        }
        match self.register_gdr(&nic, addr, len, info.ordinal, Path::PeerMem) {
            Ok(mrs) => {
                let region = Region { addr, len, kind, path: Path::PeerMem, nic: name, id };
                Ok((region, mrs, format!("nvidia-peermem MR on {} (dma-buf failed: {dmabuf})", nic.name())))
            }
            Err(e) => staged(format!("dma-buf failed ({dmabuf}); nvidia-peermem failed ({e})")),
        }
    }

    /// The staging pool, allocated at first use: pinned through CUDA where it is loadable, else
    /// ordinary page-aligned host memory (tests).
    pub fn staging_pool(&self) -> Result<Arc<SlotPool>, MemError> {
        let mut slot = self.staging.lock();
        if let Some(p) = slot.as_ref() {
            return Ok(Arc::clone(p));
        }
        let (size, slot_size) = (self.staging_size as usize, self.staging_slot as usize);
        let memory: Box<dyn staging::SlotMemory> = match cuda::cuda() {
            Ok(c) => Box::new(c.alloc_pinned(size)?),
            Err(_) => Box::new(staging::PageAlignedHost::new(size).map_err(|e| MemError::Staging(e.to_string()))?),
        };
        let pool = SlotPool::new(memory, slot_size).map_err(|e| MemError::Staging(e.to_string()))?;
        *slot = Some(Arc::clone(&pool));
        Ok(pool)
    }

    /// The staging copy engine of GPU `ordinal`, made at first use.
    pub fn copy_engine(&self, ordinal: i32) -> Result<Arc<StageEngine>, MemError> {
        let mut engines = self.engines.lock();
        if let Some(e) = engines.get(&ordinal) {
            return Ok(Arc::clone(e));
        }
        let e = Arc::new(self.gpu.copy_engine(ordinal)?);
        engines.insert(ordinal, Arc::clone(&e));
        Ok(e)
    }

    /// The counters.
    pub fn stats(&self) -> MemStats {
        let mut s = MemStats { cache: self.cache.stats(), ..MemStats::default() };
        for r in self.regions.read().values() {
            s.regions += 1;
            match r.path {
                Path::Host => s.host_bytes += r.len,
                Path::Dmabuf | Path::PeerMem => s.gdr_bytes += r.len,
                Path::Staging => s.staged_bytes += r.len,
            }
        }
        s.staging = self.staging.lock().as_ref().map(|p| p.stats());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct FakeNic {
        dmabuf_ok: bool,
    }

    impl Nic for FakeNic {
        fn name(&self) -> &str {
            "mlx5_0"
        }
        fn register(&self, _addr: u64, _len: u64) -> Result<Mr, String> {
            Ok(Mr::detached("mlx5_0", 1, 2))
        }
        fn register_dmabuf(&self, _fd: i32, _off: u64, _len: u64, _iova: u64) -> Result<Mr, String> {
            if self.dmabuf_ok { Ok(Mr::detached("mlx5_0", 3, 4)) } else { Err("EOPNOTSUPP".into()) }
        }
    }

    /// GPU memory at 0x7000_0000 (1 MiB, GPU 1); everything else is host memory.
    struct FakeGpu;

    impl GpuDriver for FakeGpu {
        fn pointer_info(&self, addr: u64) -> Result<PtrInfo, MemError> {
            let device = (0x7000_0000..0x7010_0000).contains(&addr);
            Ok(PtrInfo { device, ordinal: if device { 1 } else { -1 }, base: 0x7000_0000, size: 1 << 20, buffer_id: 9 })
        }
        fn export_dmabuf(&self, _o: i32, _b: u64, _s: u64) -> Result<OwnedFd, MemError> {
            Ok(std::fs::File::open("/dev/null").unwrap().into())
        }
        fn copy_engine(&self, _o: i32) -> Result<StageEngine, MemError> {
            Ok(StageEngine::Host(staging::HostCopy::new().unwrap()))
        }
    }

    fn registry(nic: Option<bool>, peermem: bool, staging_mb: u64) -> (Registry, tempfile::TempDir) {
        let sysfs = tempfile::tempdir().unwrap();
        if peermem {
            std::fs::create_dir_all(sysfs.path().join("sys/module/nvidia_peermem")).unwrap();
        }
        let cfg = MemConfig { staging_size: staging_mb << 20, staging_slot: 1 << 20, ..MemConfig::default() };
        let nics: Vec<Arc<dyn Nic>> =
            nic.map(|ok| Arc::new(FakeNic { dmabuf_ok: ok }) as Arc<dyn Nic>).into_iter().collect();
        let r = Registry::new(
            &cfg,
            nics,
            "RDMA is unavailable".into(),
            Box::new(|_| None),
            Box::new(FakeGpu),
            sysfs.path().into(),
        );
        (r, sysfs)
    }

    const GPU: u64 = 0x7000_0000;

    #[test]
    fn gpu_memory_takes_dmabuf_then_peermem_then_staging() {
        let (r, _d) = registry(Some(true), false, 4);
        let h = r.register(GPU, 4096, Declared::Vram).unwrap();
        assert_eq!((h.region().path, h.region().nic.as_deref()), (Path::Dmabuf, Some("mlx5_0")));
        assert_eq!(h.region().kind, Kind::Device { ordinal: 1 });
        assert_eq!(r.resolve(GPU + 100, 10).unwrap().value().mrs[0].lkey, 3, "the dma-buf MR");

        let (r, _d) = registry(Some(false), true, 4);
        assert_eq!(r.register(GPU, 4096, Declared::Vram).unwrap().region().path, Path::PeerMem);

        let (r, _d) = registry(Some(false), false, 4);
        assert_eq!(r.register(GPU, 4096, Declared::Vram).unwrap().region().path, Path::Staging);
        assert!(r.stats().staging.is_some(), "the pool is allocated at the first staged registration");

        let (r, _d) = registry(None, false, 4);
        assert_eq!(r.register(GPU, 4096, Declared::Vram).unwrap().region().path, Path::Staging);
    }

    #[test]
    fn bad_gpu_registrations_name_the_problem() {
        let (r, _d) = registry(None, false, 0);
        let e = r.register(GPU, 4096, Declared::Vram).unwrap_err();
        assert!(matches!(e, MemError::StagingOff { .. }) && e.to_string().contains("MEMKV_STAGING_SIZE_MB"), "{e}");
        let (r, _d) = registry(None, false, 4);
        let e = r.register(0x1000, 4096, Declared::Vram).unwrap_err();
        assert!(matches!(e, MemError::NotDevice { .. }) && e.to_string().contains("DRAM_SEG"), "{e}");
        let e = r.register(GPU + (1 << 20) - 10, 4096, Declared::Vram).unwrap_err();
        assert!(matches!(e, MemError::PastAllocation { .. }), "{e}");
        assert!(matches!(r.register(GPU, 0, Declared::Vram), Err(MemError::InvalidRange { .. })));
    }

    #[test]
    fn host_regions_resolve_anywhere_inside_and_deregister_invalidates() {
        let (r, _d) = registry(Some(true), false, 4);
        let h = r.register(0x10_0000, 1 << 20, Declared::Dram).unwrap();
        assert_eq!(h.region().path, Path::Host);
        let e = r.resolve(0x10_0000 + 4096, 4096).unwrap();
        assert_eq!((e.start(), e.len(), e.value().mrs.len()), (0x10_0000, 1 << 20, 1));
        assert!(r.resolve(0x10_0000 + (1 << 20) - 1, 2).is_err(), "past the end");
        let s = r.stats();
        assert_eq!((s.regions, s.host_bytes, s.cache.hits), (1, 1 << 20, 1));
        r.deregister(h);
        assert!(matches!(r.resolve(0x10_0000, 10), Err(MemError::NotRegistered { .. })));
        assert_eq!(r.stats().cache.entries, 0);
    }
}
