//! A fake sysfs tree for tests of [`super::discover`] and `memkv topo`: directories, `numa_node`
//! files and relative symlinks in exactly the kernel's shapes, so `std::fs::canonicalize`
//! resolves them as it does under `/sys`. Not part of the supported API.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("memkv-topo-doc-{}", std::process::id()));
//! use memkv::topo::testing::FakeSysfs;
//! let fake = FakeSysfs::new(&dir).unwrap();
//! fake.gpu("pci0000:16/0000:16:02.0/0000:17:00.0/0000:18:00.0/0000:19:00.0", 0).unwrap();
//! fake.nic("mlx5_0", "pci0000:16/0000:16:02.0/0000:17:00.0/0000:18:01.0/0000:1a:00.0", 0, &["4: ACTIVE"]).unwrap();
//! assert!(dir.join("sys/class/infiniband/mlx5_0/device").exists());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::sysfs::is_bdf;

/// Builds `sys/devices/<chain>`, `sys/bus/pci/devices/<bdf>` and `sys/class/infiniband/<nic>`
/// under a root directory.
#[derive(Debug, Clone)]
pub struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    /// Starts a tree under `root` (created if missing) with an empty `sys/devices` and
    /// `sys/bus/pci/devices`, and no `sys/class/infiniband` (see [`Self::infiniband_class`]).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("sys/devices"))?;
        std::fs::create_dir_all(root.join("sys/bus/pci/devices"))?;
        Ok(Self { root })
    }

    /// The root to pass to [`super::discover`] or `memkv topo --sysfs-root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds a PCI function at `chain` (`pci0000:16/0000:16:02.0/…/0000:19:00.0`, root complex
    /// first, the function last) with its bridges: one directory per component, a `numa_node`
    /// file in each PCI one (`numa`, `-1` for unknown; an existing bridge keeps its own) and the
    /// link `sys/bus/pci/devices/<bdf> -> ../../../devices/<prefix>` for each.
    pub fn pci(&self, chain: &str, numa: i32) -> io::Result<&Self> {
        let parts: Vec<&str> = chain.split('/').collect();
        if parts.len() < 2 || is_bdf(parts[0]) || !parts[1..].iter().all(|p| is_bdf(p)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{chain:?} is not `pciDDDD:BB/` followed by PCI addresses"),
            ));
        }
        for i in 1..parts.len() {
            let prefix = parts[..=i].join("/");
            let dir = self.root.join("sys/devices").join(&prefix);
            std::fs::create_dir_all(&dir)?;
            let numa_file = dir.join("numa_node");
            if !numa_file.exists() {
                std::fs::write(&numa_file, format!("{numa}\n"))?;
            }
            let link = self.root.join("sys/bus/pci/devices").join(parts[i]);
            if link.symlink_metadata().is_err() {
                symlink(format!("../../../devices/{prefix}"), &link)?;
            }
        }
        Ok(self)
    }

    /// [`Self::pci`] plus NVIDIA `vendor`/`device` id files (an H100, `10de:2330`).
    pub fn gpu(&self, chain: &str, numa: i32) -> io::Result<&Self> {
        self.pci(chain, numa)?;
        let dir = self.root.join("sys/devices").join(chain);
        std::fs::write(dir.join("vendor"), "0x10de\n")?;
        std::fs::write(dir.join("device"), "0x2330\n")?;
        Ok(self)
    }

    /// Creates `sys/class/infiniband` (so an empty class directory can be tested).
    pub fn infiniband_class(&self) -> io::Result<&Self> {
        std::fs::create_dir_all(self.root.join("sys/class/infiniband"))?;
        Ok(self)
    }

    /// Adds RDMA device `name` on the PCI function at `chain` ([`Self::pci`]), with one port per
    /// entry of `port_states` (`"4: ACTIVE"`, `"1: DOWN"`): the directory
    /// `sys/devices/<chain>/infiniband/<name>/` holding `device -> ../../../<bdf>` and
    /// `ports/<n>/state`, and the link `sys/class/infiniband/<name> -> ../../devices/<chain>/infiniband/<name>`.
    pub fn nic(&self, name: &str, chain: &str, numa: i32, port_states: &[&str]) -> io::Result<&Self> {
        self.pci(chain, numa)?;
        let bdf = chain.rsplit('/').next().unwrap_or(chain);
        let dir = self.root.join("sys/devices").join(chain).join("infiniband").join(name);
        std::fs::create_dir_all(&dir)?;
        symlink(format!("../../../{bdf}"), dir.join("device"))?;
        for (i, state) in port_states.iter().enumerate() {
            let port = dir.join("ports").join((i + 1).to_string());
            std::fs::create_dir_all(&port)?;
            std::fs::write(port.join("state"), format!("{state}\n"))?;
        }
        self.infiniband_class()?;
        symlink(format!("../../devices/{chain}/infiniband/{name}"), self.root.join("sys/class/infiniband").join(name))?;
        Ok(self)
    }

    /// Writes `sys/devices/system/node/online` (`"0"` for a single-node machine, `"0-1"` for two).
    pub fn numa_online(&self, online: &str) -> io::Result<&Self> {
        let dir = self.root.join("sys/devices/system/node");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("online"), format!("{online}\n"))?;
        Ok(self)
    }
}
