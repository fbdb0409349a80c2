//! RDMA NICs for memory registration, through `sideway` (libibverbs is opened at run time, so
//! this builds and runs on hosts without rdma-core; every verb then fails with a clean error).
//! The [`Nic`] trait is what the registry needs; tests use a fake.

use std::fmt;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;

/// A registration on one NIC: the keys a work request names it by. Deregistered on drop.
pub struct Mr {
    /// The NIC.
    pub nic: String,
    /// Local key.
    pub lkey: u32,
    /// Remote key.
    pub rkey: u32,
    _keep: Option<Arc<dyn Send + Sync>>,
}

impl fmt::Debug for Mr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mr").field("nic", &self.nic).field("lkey", &self.lkey).field("rkey", &self.rkey).finish()
    }
}

impl Mr {
    /// A registration without verbs resources (fakes in tests).
    pub fn detached(nic: &str, lkey: u32, rkey: u32) -> Self {
        Self { nic: nic.to_string(), lkey, rkey, _keep: None }
    }
}

/// One opened NIC.
pub trait Nic: Send + Sync + fmt::Debug {
    /// Its name (`mlx5_0`).
    fn name(&self) -> &str;
    /// Registers `len` bytes at `addr`: host memory, or device memory when nvidia-peermem is
    /// loaded (the kernel module resolves GPU pages for `ibv_reg_mr`).
    fn register(&self, addr: u64, len: u64) -> Result<Mr, String>;
    /// Registers `len` bytes at `offset` of a dma-buf, addressed as `iova` in work requests.
    fn register_dmabuf(&self, fd: RawFd, offset: u64, len: u64, iova: u64) -> Result<Mr, String>;
}

/// What every MR allows: local writes (receives) and one-sided remote reads and writes.
fn access() -> AccessFlags {
    AccessFlags::LocalWrite | AccessFlags::RemoteWrite | AccessFlags::RemoteRead
}

/// A NIC opened through verbs, with one protection domain.
struct VerbsNic {
    name: String,
    pd: Arc<ProtectionDomain>,
}

impl fmt::Debug for VerbsNic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerbsNic").field("name", &self.name).finish()
    }
}

fn mr(nic: &str, m: Arc<MemoryRegion>) -> Mr {
    Mr { nic: nic.to_string(), lkey: m.lkey(), rkey: m.rkey(), _keep: Some(m) }
}

impl Nic for VerbsNic {
    fn name(&self) -> &str {
        &self.name
    }

    fn register(&self, addr: u64, len: u64) -> Result<Mr, String> {
        // SAFETY: the registry registers only regions the application registered and keeps
        // valid until it deregisters them, which drops this MR first.
        let m = unsafe { self.pd.reg_mr(addr as usize, len as usize, access()) };
        m.map(|m| mr(&self.name, m)).map_err(|e| format!("ibv_reg_mr on {}: {e}", self.name))
    }

    fn register_dmabuf(&self, fd: RawFd, offset: u64, len: u64, iova: u64) -> Result<Mr, String> {
        // SAFETY: `fd` is a dma-buf exported by the CUDA driver for memory the application keeps
        // valid until it deregisters it (as for `register`).
        let m = unsafe { self.pd.reg_dmabuf_mr(offset, len as usize, iova, fd, access()) };
        m.map(|m| mr(&self.name, m)).map_err(|e| format!("ibv_reg_dmabuf_mr on {}: {e}", self.name))
    }
}

/// Opens the NICs named in `wanted` (every NIC when empty). Err says why RDMA is unusable: no
/// libibverbs, no kernel support, no device, or a named device that does not exist.
pub fn open(wanted: &[String]) -> Result<Vec<Arc<dyn Nic>>, String> {
    let list = DeviceList::new().map_err(|e| format!("RDMA is unavailable on this host ({e})"))?;
    let found: Vec<_> = list.iter().collect();
    let names: Vec<String> = found.iter().map(|d| d.name()).collect();
    if found.is_empty() {
        return Err("RDMA is unavailable on this host (no RDMA device)".into());
    }
    if let Some(missing) = wanted.iter().find(|w| !names.contains(w)) {
        return Err(format!(
            "MEMKV_RDMA_DEVICES names {missing:?}, which this host does not have; it has {}",
            names.join(", ")
        ));
    }
    let mut out: Vec<Arc<dyn Nic>> = Vec::new();
    for (d, name) in found.iter().zip(&names) {
        if !wanted.is_empty() && !wanted.contains(name) {
            continue;
        }
        let ctx = d.open().map_err(|e| format!("cannot open RDMA device {name}: {e}"))?;
        let pd = ctx.alloc_pd().map_err(|e| format!("cannot allocate a protection domain on {name}: {e}"))?;
        out.push(Arc::new(VerbsNic { name: name.clone(), pd }));
    }
    Ok(out)
}

/// Whether the nvidia-peermem module (or the legacy nv_peer_mem) is loaded under sysfs `root`.
pub fn peermem_loaded(root: &Path) -> bool {
    ["sys/module/nvidia_peermem", "sys/kernel/mm/memory_peers/nv_mem/version", "sys/module/nv_peer_mem"]
        .iter()
        .any(|p| root.join(p).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rdma_open_is_a_clean_error() {
        if Path::new("/sys/class/infiniband").exists() {
            return; // a host with RDMA
        }
        let e = open(&[]).unwrap_err();
        assert!(e.contains("RDMA is unavailable"), "{e}");
    }

    #[test]
    fn peermem_is_found_by_its_sysfs_entries() {
        let d = tempfile::tempdir().unwrap();
        assert!(!peermem_loaded(d.path()));
        std::fs::create_dir_all(d.path().join("sys/module/nvidia_peermem")).unwrap();
        assert!(peermem_loaded(d.path()));
    }
}
