//! Reading the PCI and RDMA parts of sysfs under an injectable root.
//!
//! Owns every file-system access of `topo`; never classifies or ranks. The root is `/` in
//! production and a directory tree in tests ([`super::testing::FakeSysfs`]), built with the same
//! link shapes as the kernel's, so the same `canonicalize` calls resolve both.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::{Nic, TopoError};

/// Where a PCI function sits: its chain of components under `/sys/devices` and its NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Location {
    /// Components of the device's real path relative to `/sys/devices`, root complex first, e.g.
    /// `["pci0000:16", "0000:16:02.0", "0000:17:00.0", "0000:18:00.0", "0000:19:00.0"]`; empty
    /// when the device is not under `/sys/devices` (then only the NUMA node places it).
    pub(crate) chain: Vec<String>,
    /// NUMA node; `None` when sysfs says `-1` or has no `numa_node` file.
    pub(crate) numa: Option<u32>,
}

/// The RDMA devices found, or why there are none.
#[derive(Debug, Default)]
pub(crate) struct NicScan {
    /// Devices with their locations, sorted by name.
    pub(crate) nics: Vec<(Nic, Location)>,
    /// Why `nics` is empty.
    pub(crate) none_reason: Option<String>,
}

/// A sysfs tree rooted at `root` (`/` for the live system).
#[derive(Debug)]
pub(crate) struct Sysfs {
    root: PathBuf,
    /// `canonicalize(<root>/sys/devices)`, if it exists.
    devices: Option<PathBuf>,
    /// The machine has exactly one NUMA node (`sys/devices/system/node/online` is `0`), so a
    /// device whose `numa_node` is `-1` is on it too.
    single_node: bool,
}

/// Turns a read error into [`TopoError::Io`], naming the path.
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TopoError + '_ {
    move |source| TopoError::Io { path: path.to_path_buf(), source }
}

impl Sysfs {
    /// Opens the tree under `root`. Nothing is required to exist.
    pub(crate) fn new(root: &Path) -> Self {
        let devices = std::fs::canonicalize(root.join("sys/devices")).ok();
        let online = std::fs::read_to_string(root.join("sys/devices/system/node/online")).unwrap_or_default();
        Self { root: root.to_path_buf(), devices, single_node: online.trim() == "0" }
    }

    /// Whether a `-1` NUMA node can be taken as node 0 (single-node machine).
    pub(crate) fn single_node(&self) -> bool {
        self.single_node
    }

    /// `<root>/<rel>`.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The location of the device whose real directory is `dir` (already canonical).
    fn locate_dir(&self, dir: &Path) -> Location {
        let chain = match self.devices.as_deref().and_then(|d| dir.strip_prefix(d).ok()) {
            Some(rel) => rel
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        Location { chain, numa: read_numa(&dir.join("numa_node")) }
    }

    /// The location of PCI function `bdf` (normalised), or `None` if
    /// `<root>/sys/bus/pci/devices/<bdf>` does not exist.
    pub(crate) fn pci_location(&self, bdf: &str) -> Result<Option<Location>, TopoError> {
        let link = self.root.join("sys/bus/pci/devices").join(bdf);
        match std::fs::canonicalize(&link) {
            Ok(dir) => Ok(Some(self.locate_dir(&dir))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&link)(e)),
        }
    }

    /// `vendor:device` ids of PCI function `bdf` (e.g. `10de:2330`), if sysfs has them.
    pub(crate) fn pci_ids(&self, bdf: &str) -> Option<String> {
        let dir = self.root.join("sys/bus/pci/devices").join(bdf);
        let id = |f: &str| {
            let s = std::fs::read_to_string(dir.join(f)).ok()?;
            let s = s.trim();
            Some(s.strip_prefix("0x").unwrap_or(s).to_ascii_lowercase())
        };
        Some(format!("{}:{}", id("vendor")?, id("device")?))
    }

    /// Every device in `<root>/sys/class/infiniband`, active or not, sorted by name.
    pub(crate) fn nics(&self) -> Result<NicScan, TopoError> {
        let class = self.root.join("sys/class/infiniband");
        let entries = match std::fs::read_dir(&class) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(NicScan {
                    nics: Vec::new(),
                    none_reason: Some(format!(
                        "{} does not exist: no RDMA driver is loaded (e.g. `modprobe mlx5_ib`), or this machine has \
                         no RDMA NIC",
                        class.display()
                    )),
                });
            }
            Err(e) => return Err(io_err(&class)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            names.push(entry.map_err(io_err(&class))?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        let mut nics = Vec::with_capacity(names.len());
        for name in names {
            nics.push(self.nic(&class, name)?);
        }
        let none_reason = nics.is_empty().then(|| {
            format!("{} is empty: the RDMA driver found no device (check `ibv_devices`, `dmesg`)", class.display())
        });
        Ok(NicScan { nics, none_reason })
    }

    /// One RDMA device: its PCI function, NUMA node and port states.
    fn nic(&self, class: &Path, name: String) -> Result<(Nic, Location), TopoError> {
        let dir = class.join(&name);
        // A device without a PCI parent (soft RoCE `rxe0`) has no `device` link: it stays in the
        // list with no bus id and an empty chain, so it ranks by NUMA node alone.
        let (bus_id, loc) = match std::fs::canonicalize(dir.join("device")) {
            Ok(dev) => {
                let bdf = dev.file_name().map(|f| f.to_string_lossy().into_owned());
                (bdf, self.locate_dir(&dev))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, Location::default()),
            Err(e) => return Err(io_err(&dir.join("device"))(e)),
        };
        let (mut ports, mut ports_active) = (0, 0);
        let ports_dir = dir.join("ports");
        match std::fs::read_dir(&ports_dir) {
            Ok(entries) => {
                for entry in entries {
                    let state_path = entry.map_err(io_err(&ports_dir))?.path().join("state");
                    let Ok(state) = std::fs::read_to_string(&state_path) else { continue };
                    ports += 1;
                    if state.contains("ACTIVE") {
                        ports_active += 1;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&ports_dir)(e)),
        }
        let nic = Nic { name, bus_id, numa: loc.numa, ports, ports_active, active: ports_active > 0 };
        Ok((nic, loc))
    }
}

/// Reads a `numa_node` file: `-1` (or any negative value), a missing file and garbage are unknown.
fn read_numa(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse::<i64>().ok().and_then(|n| u32::try_from(n).ok())
}

/// Whether a path component is a PCI function address (`0000:17:00.0`) rather than a host bridge
/// (`pci0000:16`) or anything else.
pub(crate) fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        && hex(11..12)
}
