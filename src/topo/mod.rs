//! PCIe topology: which NIC each GPU should use, and whether GPUDirect RDMA pays off on that path.
//!
//! Owns the GPU → NIC plan: reading sysfs (`sysfs.rs`, under an injectable root so tests use a
//! directory tree), listing GPUs (NVML, or bus ids the caller gives), classifying each GPU/NIC
//! path, ranking and spreading GPUs over NICs, and applying `MEMKV_GPU_NIC_MAP`. It never opens a
//! verbs device or a CUDA context and never writes anything; it only reads files.
//!
//! The algorithm (NCCL's path types, UCX's common-ancestor test, Mooncake's preferred set):
//!
//! * a device's *chain* is the components of its real sysfs path under `/sys/devices`, root
//!   complex first (`pci0000:16/0000:16:02.0/0000:17:00.0/0000:18:00.0/0000:19:00.0`);
//! * for a GPU chain `a` and a NIC chain `b` with `common` shared leading components,
//!   `hops = (|a| − common) + (|b| − common)` and the [`Tier`] is `PIX` when the last shared
//!   component is a PCI bridge and each side is at most two below it (one switch: downstream port
//!   and endpoint), `PXB` for a deeper shared bridge, `PHB` when only the host bridge is shared,
//!   `NODE` for different root complexes on one NUMA node, and `SYS` otherwise (another socket,
//!   or a NUMA node sysfs does not know — unless the machine has a single node);
//! * each GPU ranks the NICs by (active first, tier, hops, name); its *preferred set* is the NICs
//!   that tie with the best; GPUs are placed most-constrained first, each on the least-used NIC of
//!   its preferred set, so GPUs sharing a preferred set take its members in turn; every other NIC
//!   is a fallback, in rank order;
//! * GPUDirect RDMA is advised when the chosen path is `PIX` or `PXB` (NCCL's default GDR level on
//!   hosts without C2C); otherwise stage through pinned host memory on the NIC's NUMA node;
//! * a [`GpuNicRule`] replaces the computed choice for the GPU it names (first NIC chosen, the
//!   rest its fallbacks).
//!
//! Invariants: [`GpuPlacement::nic`], `tier` and `hops` are all `Some` or all `None` (`None` only
//! when there is no NIC); every NIC named in a placement is in [`Topology::nics`]; a computed
//! choice is always in the GPU's preferred set.
//!
//! GPU indices ([`Gpu::index`], and [`GpuRef::Index`] in overrides) are CUDA ordinals as this
//! process sees them. With [`GpuSource::Nvml`] they are derived: NVML lists GPUs in PCI bus order
//! and ignores `CUDA_VISIBLE_DEVICES`, so the list is filtered and renumbered by an integer
//! `CUDA_VISIBLE_DEVICES` (UUID entries leave it as NVML has it); this matches CUDA's numbering
//! with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, and in practice on hosts with identical GPUs. With
//! [`GpuSource::BusIds`] the index is the position in the list; a caller holding CUDA devices
//! should pass them as [`GpuSource::Gpus`] with their ordinals.
//!
//! ```
//! use memkv::topo::{GpuSource, Tier, discover, testing::FakeSysfs};
//! # let dir = std::env::temp_dir().join(format!("memkv-topo-mod-doc-{}", std::process::id()));
//! let fake = FakeSysfs::new(&dir).unwrap();
//! fake.gpu("pci0000:16/0000:16:02.0/0000:17:00.0/0000:18:00.0/0000:19:00.0", 0).unwrap();
//! fake.nic("mlx5_0", "pci0000:16/0000:16:02.0/0000:17:00.0/0000:18:01.0/0000:1a:00.0", 0, &["4: ACTIVE"]).unwrap();
//! let topo = discover(fake.root(), &[], GpuSource::BusIds(vec!["0000:19:00.0".into()]), &[]).unwrap();
//! assert_eq!(topo.nic_for(0), Some("mlx5_0"));
//! assert_eq!(topo.gpus[0].tier, Some(Tier::Pix));
//! assert!(topo.gpus[0].gdr);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

mod nvml;
mod sysfs;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{GpuNicRule, GpuRef, normalize_bdf};
use sysfs::{Location, Sysfs, is_bdf};

/// How far a GPU is from a NIC over PCIe, best first (NCCL's path types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Tier {
    /// Behind the same PCIe switch (one bridge between them).
    Pix,
    /// Behind a shared chain of PCIe switches, without crossing the host bridge.
    Pxb,
    /// Through the host bridge of one root complex.
    Phb,
    /// Different root complexes of the same NUMA node (socket).
    Node,
    /// Across the inter-socket link, or a NUMA node sysfs does not know.
    Sys,
}

impl Tier {
    /// Whether GPUDirect RDMA is advised on a path of this tier (`PIX` or `PXB`).
    pub fn gdr(self) -> bool {
        self <= Tier::Pxb
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Pix => "PIX",
            Tier::Pxb => "PXB",
            Tier::Phb => "PHB",
            Tier::Node => "NODE",
            Tier::Sys => "SYS",
        })
    }
}

/// A GPU to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    /// Its index (see the module docs for whose).
    pub index: u32,
    /// Its PCI address in sysfs form (`0000:19:00.0`).
    pub bus_id: String,
    /// Its product name (NVML), or `vendor:device` ids from sysfs; empty if unknown.
    pub name: String,
}

/// An RDMA device from `/sys/class/infiniband`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// The device name (`mlx5_0`).
    pub name: String,
    /// Its PCI function (`0000:1a:00.0`); `None` for a device without one (soft RoCE).
    pub bus_id: Option<String>,
    /// Its NUMA node; `None` when sysfs says `-1`.
    pub numa: Option<u32>,
    /// Ports found under `ports/`.
    pub ports: u32,
    /// Ports whose state is `ACTIVE`.
    pub ports_active: u32,
    /// At least one port is active. Inactive devices are listed and rank after every active one.
    pub active: bool,
}

/// One NIC a GPU can use and how far it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The NIC's name.
    pub nic: String,
    /// The path's tier.
    pub tier: Tier,
    /// PCI components between the two devices (see the module docs).
    pub hops: u32,
}

/// Who chose a GPU's NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The ranking of this module.
    Computed,
    /// A `MEMKV_GPU_NIC_MAP` rule.
    Override,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Computed => "computed",
            Source::Override => "override",
        })
    }
}

/// The plan for one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuPlacement {
    /// The GPU.
    pub gpu: Gpu,
    /// The NIC it uses; `None` only when there is no NIC at all.
    pub nic: Option<String>,
    /// The tier of the GPU → `nic` path.
    pub tier: Option<Tier>,
    /// The hops of the GPU → `nic` path.
    pub hops: Option<u32>,
    /// NICs to use if `nic` fails, best first: the other NICs by rank, or an override's other NICs.
    pub fallbacks: Vec<Route>,
    /// Whether `nic` comes from the ranking or from an override.
    pub source: Source,
    /// GPUDirect RDMA is advised (`tier` is `PIX` or `PXB`).
    pub gdr: bool,
    /// Without GDR: the NUMA node to stage through (the NIC's), when known.
    pub staging_numa: Option<u32>,
}

/// The NICs, the GPUs and the NIC each GPU uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// One placement per GPU, by [`Gpu::index`].
    pub gpus: Vec<GpuPlacement>,
    /// The NICs in use (after `MEMKV_RDMA_DEVICES`), by name.
    pub nics: Vec<Nic>,
    /// Why `gpus` is empty (e.g. NVML not loadable).
    pub no_gpus_reason: Option<String>,
    /// Why `nics` is empty (e.g. no `/sys/class/infiniband`).
    pub no_nics_reason: Option<String>,
}

impl Topology {
    /// The NIC GPU `index` should use.
    pub fn nic_for(&self, index: u32) -> Option<&str> {
        self.placement(index)?.nic.as_deref()
    }

    /// The placement of GPU `index`.
    pub fn placement(&self, index: u32) -> Option<&GpuPlacement> {
        self.gpus.iter().find(|p| p.gpu.index == index)
    }
}

/// Where the GPU list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSource {
    /// NVML (`libnvidia-ml.so.1`); without it the list is empty and
    /// [`Topology::no_gpus_reason`] says why.
    Nvml,
    /// These PCI bus ids in any accepted form ([`normalize_bdf`]); indices are positions.
    BusIds(Vec<String>),
    /// These GPUs (e.g. from CUDA); bus ids are normalised.
    Gpus(Vec<Gpu>),
}

/// What went wrong in [`discover`].
#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    /// A sysfs file exists but cannot be read.
    #[error("cannot read {path}: {source}; is sysfs mounted (and is the sysfs root right)?")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A GPU bus id does not parse.
    #[error("GPU bus id: {0}")]
    BadGpuBusId(String),
    /// A GPU is listed twice.
    #[error("GPU {0} is listed twice; list each GPU once")]
    DuplicateGpu(String),
    /// A GPU's bus id is not a PCI function of this sysfs tree.
    #[error(
        "GPU {bus_id} is not a PCI device here ({path} does not exist); check the bus id with \
         `nvidia-smi --query-gpu=index,pci.bus_id --format=csv` and the sysfs root"
    )]
    GpuNotInSysfs {
        /// The GPU's bus id.
        bus_id: String,
        /// The path looked up.
        path: PathBuf,
    },
    /// The NIC list (`MEMKV_RDMA_DEVICES`) names a device that does not exist.
    #[error(
        "RDMA device {name:?} does not exist; found: {available}. List names from `ls /sys/class/infiniband` \
         in MEMKV_RDMA_DEVICES, or leave it empty to use all"
    )]
    UnknownRdmaDevice {
        /// The name.
        name: String,
        /// The devices that exist, comma-separated, or `none`.
        available: String,
    },
    /// An override (`MEMKV_GPU_NIC_MAP`) names a GPU that was not found.
    #[error(
        "the GPU → NIC map names GPU {gpu}, which is not among the GPUs found ({available}); use a CUDA index or \
         bus id that `memkv topo` lists in MEMKV_GPU_NIC_MAP"
    )]
    UnknownOverrideGpu {
        /// The GPU as the rule names it.
        gpu: String,
        /// The GPUs found, or `none` with the reason.
        available: String,
    },
    /// An override (`MEMKV_GPU_NIC_MAP`) names a NIC that is not in use.
    #[error(
        "the GPU → NIC map sends GPU {gpu} to {nic:?}, which is not an RDMA device in use (in use: {available}); \
         fix the name in MEMKV_GPU_NIC_MAP or add the device to MEMKV_RDMA_DEVICES"
    )]
    UnknownOverrideNic {
        /// The GPU as the rule names it.
        gpu: String,
        /// The NIC name.
        nic: String,
        /// The NICs in use, or `none`.
        available: String,
    },
}

/// Plans which NIC each GPU uses.
///
/// `root` is the sysfs root (`/`); `rdma_devices` limits the NICs to these names (empty: all,
/// else each must exist); `gpus` says where the GPU list comes from; `overrides` replace the
/// computed choice for the GPUs they name (each GPU and NIC they name must exist).
///
/// No GPU (NVML missing) or no NIC is not an error: the result says why in
/// [`Topology::no_gpus_reason`] / [`Topology::no_nics_reason`].
pub fn discover(
    root: &Path,
    rdma_devices: &[String],
    gpus: GpuSource,
    overrides: &[GpuNicRule],
) -> Result<Topology, TopoError> {
    let fs = Sysfs::new(root);
    let scan = fs.nics()?;
    let mut nics = scan.nics;
    if !rdma_devices.is_empty() {
        for name in rdma_devices {
            if !nics.iter().any(|(n, _)| &n.name == name) {
                return Err(TopoError::UnknownRdmaDevice {
                    name: name.clone(),
                    available: list_or_none(nics.iter().map(|(n, _)| n.name.as_str())),
                });
            }
        }
        nics.retain(|(n, _)| rdma_devices.contains(&n.name));
    }

    let (gpu_list, no_gpus_reason) = match gpus {
        GpuSource::Nvml => match nvml::gpus() {
            Ok(g) => {
                let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                let g = cuda_view(g, visible.as_deref());
                let why = g.is_empty().then(|| {
                    format!("CUDA_VISIBLE_DEVICES={:?} leaves no GPU visible", visible.as_deref().unwrap_or_default())
                });
                (g, why)
            }
            Err(reason) => (Vec::new(), Some(reason)),
        },
        GpuSource::BusIds(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                let bus_id = normalize_bdf(id).map_err(TopoError::BadGpuBusId)?;
                let name = fs.pci_ids(&bus_id).unwrap_or_default();
                out.push(Gpu { index: i as u32, bus_id, name });
            }
            (out, None)
        }
        GpuSource::Gpus(list) => {
            let mut out = Vec::with_capacity(list.len());
            for g in list {
                let bus_id = normalize_bdf(&g.bus_id).map_err(TopoError::BadGpuBusId)?;
                out.push(Gpu { bus_id, ..g });
            }
            (out, None)
        }
    };
    let no_gpus_reason = match (gpu_list.is_empty(), no_gpus_reason) {
        (true, None) => Some("the GPU list is empty".to_string()),
        (_, r) => r,
    };
    let mut seen = HashSet::new();
    let mut located = Vec::with_capacity(gpu_list.len());
    for g in gpu_list {
        if !seen.insert(g.bus_id.clone()) {
            return Err(TopoError::DuplicateGpu(g.bus_id));
        }
        let loc = fs.pci_location(&g.bus_id)?.ok_or_else(|| TopoError::GpuNotInSysfs {
            path: fs.path("sys/bus/pci/devices").join(&g.bus_id),
            bus_id: g.bus_id.clone(),
        })?;
        located.push((g, loc));
    }
    located.sort_by_key(|(g, _)| g.index);

    let placements = plan(&located, &nics, overrides, fs.single_node(), no_gpus_reason.as_deref())?;
    let topo = Topology {
        gpus: placements,
        no_nics_reason: if nics.is_empty() { scan.none_reason.or_else(|| Some("no RDMA device".into())) } else { None },
        nics: nics.into_iter().map(|(n, _)| n).collect(),
        no_gpus_reason,
    };
    log(&topo);
    Ok(topo)
}

/// The NIC to use for each CUDA ordinal, as `mem::Registry` asks for it: [`discover`] over
/// `root` with the NICs `nics` (the ones opened), NVML's GPUs and `overrides`, planned once now
/// (and logged). `None` for an ordinal without a plan: no NIC, no NVML, or a plan that failed (a
/// warning says why; the caller then uses its default NIC).
pub fn chooser(
    root: &Path,
    nics: &[String],
    overrides: &[GpuNicRule],
) -> Box<dyn Fn(i32) -> Option<String> + Send + Sync> {
    if nics.is_empty() {
        return Box::new(|_| None);
    }
    match discover(root, nics, GpuSource::Nvml, overrides) {
        Ok(topo) => {
            let map: Vec<(u32, String)> = topo.gpus.into_iter().filter_map(|p| Some((p.gpu.index, p.nic?))).collect();
            Box::new(move |ordinal| {
                let ordinal = u32::try_from(ordinal).ok()?;
                map.iter().find(|(i, _)| *i == ordinal).map(|(_, n)| n.clone())
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "topo: no GPU → NIC plan; every GPU uses the default NIC");
            Box::new(|_| None)
        }
    }
}

/// NVML's GPUs renumbered as CUDA ordinals under `CUDA_VISIBLE_DEVICES` (`visible`): an integer
/// list picks and orders NVML's (PCI-ordered) GPUs, stopping at the first index that does not
/// exist, as CUDA does; an empty value hides every GPU; anything else (UUIDs, MIG ids) leaves the
/// list unchanged, since NVML's index cannot be matched without them.
pub(crate) fn cuda_view(nvml: Vec<Gpu>, visible: Option<&str>) -> Vec<Gpu> {
    let Some(visible) = visible.map(str::trim) else { return nvml };
    if visible.is_empty() {
        return Vec::new();
    }
    let Ok(picks) = visible.split(',').map(|s| s.trim().parse::<u32>()).collect::<Result<Vec<_>, _>>() else {
        tracing::debug!(visible, "topo: CUDA_VISIBLE_DEVICES is not a list of indices; using NVML's numbering");
        return nvml;
    };
    let mut out = Vec::with_capacity(picks.len());
    for (ordinal, pick) in picks.into_iter().enumerate() {
        let Some(g) = nvml.iter().find(|g| g.index == pick) else { break };
        out.push(Gpu { index: ordinal as u32, ..g.clone() });
    }
    out
}

/// One line per decision an operator needs.
fn log(topo: &Topology) {
    if let Some(r) = &topo.no_nics_reason {
        tracing::info!(reason = %r, "topo: no RDMA NIC");
    }
    if let Some(r) = &topo.no_gpus_reason {
        tracing::info!(reason = %r, "topo: no GPU");
    }
    for p in &topo.gpus {
        tracing::info!(
            gpu = p.gpu.index,
            bus_id = %p.gpu.bus_id,
            nic = p.nic.as_deref().unwrap_or("-"),
            tier = %p.tier.map_or("-".to_string(), |t| t.to_string()),
            hops = p.hops.unwrap_or(0),
            gdr = p.gdr,
            source = %p.source,
            fallbacks = p.fallbacks.len(),
            "topo: GPU → NIC"
        );
    }
}

/// `a, b, c`, or `none`.
fn list_or_none<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() { "none".to_string() } else { v.join(", ") }
}

/// The tier and hops of the path between a GPU and a NIC (module docs).
pub(crate) fn classify(gpu: &Location, nic: &Location, single_node: bool) -> (Tier, u32) {
    let (a, b) = (&gpu.chain, &nic.chain);
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (da, db) = (a.len() - common, b.len() - common);
    let hops = (da + db) as u32;
    let tier = if common >= 1 && is_bdf(&a[common - 1]) {
        if da <= 2 && db <= 2 { Tier::Pix } else { Tier::Pxb }
    } else if common >= 1 {
        Tier::Phb
    } else {
        let numa = |n: Option<u32>| if single_node { Some(n.unwrap_or(0)) } else { n };
        match (numa(gpu.numa), numa(nic.numa)) {
            (Some(x), Some(y)) if x == y => Tier::Node,
            _ => Tier::Sys,
        }
    };
    (tier, hops)
}

/// A NIC ranked for one GPU: (inactive, tier, hops, NIC position; positions follow names).
type Rank = (bool, Tier, u32, usize);

/// Ranks, spreads and applies overrides (module docs).
fn plan(
    gpus: &[(Gpu, Location)],
    nics: &[(Nic, Location)],
    overrides: &[GpuNicRule],
    single_node: bool,
    no_gpus_reason: Option<&str>,
) -> Result<Vec<GpuPlacement>, TopoError> {
    // Every GPU's NICs, best first.
    let ranked: Vec<Vec<Rank>> = gpus
        .iter()
        .map(|(_, gl)| {
            let mut r: Vec<Rank> = nics
                .iter()
                .enumerate()
                .map(|(i, (n, nl))| {
                    let (tier, hops) = classify(gl, nl, single_node);
                    (!n.active, tier, hops, i)
                })
                .collect();
            r.sort();
            r
        })
        .collect();
    let route = |&(_, tier, hops, i): &Rank| Route { nic: nics[i].0.name.clone(), tier, hops };

    // Overrides first: they are fixed, and the computed choices spread around them.
    let mut chosen: Vec<Option<(Rank, Source)>> = vec![None; gpus.len()];
    let mut fixed_fallbacks: Vec<Vec<Route>> = vec![Vec::new(); gpus.len()];
    let mut load = vec![0usize; nics.len()];
    for rule in overrides {
        let g = gpus
            .iter()
            .position(|(g, _)| match &rule.gpu {
                GpuRef::Index(i) => g.index == *i,
                GpuRef::BusId(b) => normalize_bdf(b).is_ok_and(|b| b == g.bus_id),
            })
            .ok_or_else(|| TopoError::UnknownOverrideGpu {
                gpu: rule.gpu.to_string(),
                available: if gpus.is_empty() {
                    format!("none: {}", no_gpus_reason.unwrap_or("the GPU list is empty"))
                } else {
                    gpus.iter().map(|(g, _)| format!("{} = {}", g.index, g.bus_id)).collect::<Vec<_>>().join(", ")
                },
            })?;
        let mut routes = Vec::with_capacity(rule.nics.len());
        for name in &rule.nics {
            let rank =
                ranked[g].iter().find(|r| &nics[r.3].0.name == name).ok_or_else(|| TopoError::UnknownOverrideNic {
                    gpu: rule.gpu.to_string(),
                    nic: name.clone(),
                    available: list_or_none(nics.iter().map(|(n, _)| n.name.as_str())),
                })?;
            routes.push(*rank);
        }
        if let Some(first) = routes.first() {
            load[first.3] += 1;
            chosen[g] = Some((*first, Source::Override));
        }
        fixed_fallbacks[g] = routes.iter().skip(1).map(route).collect();
    }

    // Most constrained first: best rank, then fewest equal-best NICs, then index.
    let preferred = |g: usize| -> &[Rank] {
        let r = &ranked[g];
        let n = r.iter().take_while(|x| r.first().is_some_and(|f| (x.0, x.1, x.2) == (f.0, f.1, f.2))).count();
        &r[..n]
    };
    let mut order: Vec<usize> = (0..gpus.len()).filter(|&g| chosen[g].is_none()).collect();
    order.sort_by_key(|&g| (ranked[g].first().map(|f| (f.0, f.1, f.2)), preferred(g).len(), gpus[g].0.index));
    for g in order {
        // The least-used member of the preferred set; ties go to rank order (name).
        if let Some(best) = preferred(g).iter().min_by_key(|r| load[r.3]) {
            load[best.3] += 1;
            chosen[g] = Some((*best, Source::Computed));
        }
    }

    Ok(gpus
        .iter()
        .enumerate()
        .map(|(g, (gpu, _))| {
            let Some(((_, tier, hops, nic), source)) = chosen[g] else {
                return GpuPlacement {
                    gpu: gpu.clone(),
                    nic: None,
                    tier: None,
                    hops: None,
                    fallbacks: Vec::new(),
                    source: Source::Computed,
                    gdr: false,
                    staging_numa: None,
                };
            };
            let fallbacks = match source {
                Source::Override => fixed_fallbacks[g].clone(),
                Source::Computed => ranked[g].iter().filter(|r| r.3 != nic).map(route).collect(),
            };
            let gdr = tier.gdr();
            GpuPlacement {
                gpu: gpu.clone(),
                nic: Some(nics[nic].0.name.clone()),
                tier: Some(tier),
                hops: Some(hops),
                fallbacks,
                source,
                gdr,
                staging_numa: if gdr { None } else { nics[nic].0.numa },
            }
        })
        .collect())
}
