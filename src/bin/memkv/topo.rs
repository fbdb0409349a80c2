//! `memkv topo`: which NIC each GPU will use, the PCIe path between them, and whether GPUDirect
//! RDMA pays off. Reads sysfs (and NVML unless `--gpus` is given); needs no cluster, key or
//! license.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use memkv::config::{parse_gpu_nic_map, parse_rdma_devices};
use memkv::topo::{GpuSource, TopoError, Topology, discover};

#[derive(Args, Debug)]
pub(crate) struct TopoArgs {
    /// Print one JSON document instead of tables
    #[arg(long)]
    json: bool,
    /// Read sysfs under this directory (a saved or fake tree)
    #[arg(long, value_name = "PATH", default_value = "/")]
    sysfs_root: PathBuf,
    /// Plan for these GPU PCI bus ids instead of asking NVML
    #[arg(long, value_name = "BDF[,BDF...]")]
    gpus: Option<String>,
}

/// The flag's value, else the variable's; with the name to blame in an error.
fn flag_or_env(flag: Option<String>, flag_name: &'static str, env: &'static str) -> Option<(String, &'static str)> {
    match flag {
        Some(v) => Some((v, flag_name)),
        None => std::env::var(env).ok().filter(|v| !v.trim().is_empty()).map(|v| (v, env)),
    }
}

/// `rdma_devices` and `gpu_nic_map` are the global flags of the same names.
pub(crate) fn run(args: TopoArgs, rdma_devices: Option<String>, gpu_nic_map: Option<String>) -> Result<ExitCode> {
    let rdma = flag_or_env(rdma_devices, "--rdma-devices", "MEMKV_RDMA_DEVICES");
    let rdma_from = rdma.as_ref().map_or("MEMKV_RDMA_DEVICES", |r| r.1);
    let rdma_devices = match rdma {
        Some((v, _)) if v.trim().is_empty() => Vec::new(),
        Some((v, from)) => parse_rdma_devices(&v).map_err(anyhow::Error::msg).context(from)?,
        None => Vec::new(),
    };
    let map = flag_or_env(gpu_nic_map, "--gpu-nic-map", "MEMKV_GPU_NIC_MAP");
    let map_from = map.as_ref().map_or("MEMKV_GPU_NIC_MAP", |m| m.1);
    let overrides = match map {
        Some((v, _)) if v.trim().is_empty() => Vec::new(),
        Some((v, from)) => parse_gpu_nic_map(&v).map_err(anyhow::Error::msg).context(from)?,
        None => Vec::new(),
    };
    let given = args.gpus.is_some();
    let source = match args.gpus {
        Some(list) => GpuSource::BusIds(list.split(',').map(|s| s.trim().to_string()).collect()),
        None => GpuSource::Nvml,
    };
    let topo = discover(&args.sysfs_root, &rdma_devices, source, &overrides).map_err(|e| {
        // Name the flag or variable the bad value came from.
        let from = match &e {
            TopoError::UnknownRdmaDevice { .. } => Some(rdma_from),
            TopoError::UnknownOverrideGpu { .. } | TopoError::UnknownOverrideNic { .. } => Some(map_from),
            TopoError::BadGpuBusId(_) | TopoError::DuplicateGpu(_) | TopoError::GpuNotInSysfs { .. } if given => {
                Some("--gpus")
            }
            _ => None,
        };
        match from {
            Some(from) => anyhow::Error::new(e).context(from),
            None => anyhow::Error::new(e),
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&topo)?);
    } else {
        print!("{}", render(&topo, given));
    }
    Ok(ExitCode::SUCCESS)
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = width[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".to_string() } else { s.to_string() }
}

/// The GPU table, the GDR advice, then the NIC table.
fn render(topo: &Topology, gpus_given: bool) -> String {
    let mut out = String::new();
    if topo.gpus.is_empty() {
        let reason = topo.no_gpus_reason.as_deref().unwrap_or("none found");
        if gpus_given {
            out.push_str(&format!("no GPUs: {reason}\n"));
        } else {
            out.push_str(&format!("no GPUs: {reason}; pass --gpus BDF[,BDF...] to plan for given bus ids\n"));
        }
    } else {
        let mut rows = vec![
            ["GPU", "BUS ID", "NAME", "NIC", "PATH", "HOPS", "GDR", "FALLBACKS", "SOURCE"].map(String::from).to_vec(),
        ];
        for p in &topo.gpus {
            let fallbacks: Vec<String> = p.fallbacks.iter().map(|r| format!("{}({})", r.nic, r.tier)).collect();
            rows.push(vec![
                p.gpu.index.to_string(),
                p.gpu.bus_id.clone(),
                or_dash(&p.gpu.name),
                p.nic.clone().unwrap_or_else(|| "-".into()),
                p.tier.map_or("-".into(), |t| t.to_string()),
                p.hops.map_or("-".into(), |h| h.to_string()),
                match (&p.nic, p.gdr) {
                    (None, _) => "-".into(),
                    (Some(_), true) => "yes".into(),
                    (Some(_), false) => "no".into(),
                },
                or_dash(&fallbacks.join(",")),
                p.source.to_string(),
            ]);
        }
        out.push_str(&table(&rows));
        let staged: Vec<String> = topo
            .gpus
            .iter()
            .filter(|p| p.nic.is_some() && !p.gdr)
            .map(|p| match p.staging_numa {
                Some(n) => format!("GPU {} via NUMA node {n}", p.gpu.index),
                None => format!("GPU {} via the NIC's NUMA node (unknown)", p.gpu.index),
            })
            .collect();
        if !staged.is_empty() {
            out.push_str(&format!(
                "GDR no: the path leaves the PCIe switches (PHB/NODE/SYS), so stage through pinned host memory: {}\n",
                staged.join("; ")
            ));
        }
    }
    out.push('\n');
    match &topo.no_nics_reason {
        Some(reason) if topo.nics.is_empty() => out.push_str(&format!("no RDMA NICs: {reason}\n")),
        _ => {
            let mut rows = vec![["NIC", "BUS ID", "NUMA", "PORTS ACTIVE"].map(String::from).to_vec()];
            for n in &topo.nics {
                rows.push(vec![
                    n.name.clone(),
                    n.bus_id.clone().unwrap_or_else(|| "-".into()),
                    n.numa.map_or("-".into(), |x| x.to_string()),
                    format!(
                        "{}/{}{}",
                        n.ports_active,
                        n.ports,
                        if n.active { "" } else { " (no active port: used only as a last resort)" }
                    ),
                ]);
            }
            out.push_str(&table(&rows));
        }
    }
    out
}
