//! Discovery and placement over fake sysfs trees with the kernel's link shapes.

use std::path::Path;

use super::testing::FakeSysfs;
use super::*;
use crate::config::parse_gpu_nic_map;

const ACTIVE: &[&str] = &["4: ACTIVE"];

fn tree() -> (tempfile::TempDir, FakeSysfs) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path()).unwrap();
    (dir, fake)
}

fn ids(v: &[&str]) -> GpuSource {
    GpuSource::BusIds(v.iter().map(|s| s.to_string()).collect())
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn fallback_names(p: &GpuPlacement) -> Vec<&str> {
    p.fallbacks.iter().map(|r| r.nic.as_str()).collect()
}

/// An 8-GPU/8-NIC box: 2 sockets, one root complex each, 2 PCIe switches per root complex, each
/// switch holding 2 GPUs (downstream ports 0, 1) and 2 NICs (ports 2, 3). Returns the GPU bus ids.
fn dgx_like(fake: &FakeSysfs) -> Vec<String> {
    let mut gpus = Vec::new();
    for k in 0..4u32 {
        let rc = if k < 2 { 0x15 } else { 0x95 };
        let usp = rc + 1 + (k % 2) * 8;
        let head = format!("pci0000:{rc:02x}/0000:{rc:02x}:{:02x}.0/0000:{usp:02x}:00.0", 1 + k % 2);
        for j in 0..4u32 {
            let chain = format!("{head}/0000:{:02x}:{j:02x}.0/0000:{:02x}:00.0", usp + 1, usp + 2 + j);
            let numa = (k / 2) as i32;
            if j < 2 {
                fake.gpu(&chain, numa).unwrap();
                gpus.push(format!("0000:{:02x}:00.0", usp + 2 + j));
            } else {
                fake.nic(&format!("mlx5_{}", 2 * k + j - 2), &chain, numa, ACTIVE).unwrap();
            }
        }
    }
    gpus
}

#[test]
fn eight_gpus_behind_switches_each_get_their_own_pix_nic() {
    let (_d, fake) = tree();
    let gpus = dgx_like(&fake);
    let topo = discover(fake.root(), &[], GpuSource::BusIds(gpus), &[]).unwrap();
    assert_eq!(topo.gpus.len(), 8);
    assert_eq!(topo.nics.len(), 8);
    let mut used = Vec::new();
    for p in &topo.gpus {
        assert_eq!(p.tier, Some(Tier::Pix), "GPU {}", p.gpu.index);
        assert_eq!(p.hops, Some(4));
        assert!(p.gdr);
        assert_eq!(p.staging_numa, None);
        assert_eq!(p.source, Source::Computed);
        // GPU i shares a switch with mlx5_i: the pair takes the switch's two NICs in turn.
        assert_eq!(p.nic.as_deref(), Some(format!("mlx5_{}", p.gpu.index).as_str()));
        // The switch's other NIC is the first fallback, then the other switch of the root
        // complex, then the other socket.
        assert_eq!(p.fallbacks.len(), 7);
        assert_eq!(p.fallbacks[0].tier, Tier::Pix);
        assert_eq!(p.fallbacks[1].tier, Tier::Phb);
        assert_eq!(p.fallbacks[2].tier, Tier::Phb);
        assert!(p.fallbacks[3..].iter().all(|r| r.tier == Tier::Sys));
        used.push(p.nic.clone().unwrap());
    }
    used.sort();
    used.dedup();
    assert_eq!(used.len(), 8, "every NIC used exactly once: {used:?}");
    assert_eq!(topo.nic_for(5), Some("mlx5_5"));
    assert_eq!(topo.nic_for(8), None);
}

#[test]
fn nics_on_one_socket_give_far_gpus_sys_spread_round_robin_without_gdr() {
    let (_d, fake) = tree();
    fake.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0).unwrap();
    fake.nic("mlx5_0", "pci0000:00/0000:00:02.0/0000:02:00.0", 0, ACTIVE).unwrap();
    fake.nic("mlx5_1", "pci0000:00/0000:00:03.0/0000:03:00.0", 0, ACTIVE).unwrap();
    fake.gpu("pci0000:20/0000:20:01.0/0000:21:00.0", 0).unwrap();
    fake.gpu("pci0000:80/0000:80:01.0/0000:81:00.0", 1).unwrap();
    fake.gpu("pci0000:a0/0000:a0:01.0/0000:a1:00.0", 1).unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:01:00.0", "0000:21:00.0", "0000:81:00.0", "0000:a1:00.0"]), &[])
        .unwrap();
    let g = &topo.gpus;
    assert_eq!((g[0].tier, g[0].nic.as_deref()), (Some(Tier::Phb), Some("mlx5_0")));
    assert_eq!((g[1].tier, g[1].nic.as_deref()), (Some(Tier::Node), Some("mlx5_1")));
    for p in &g[2..] {
        assert_eq!(p.tier, Some(Tier::Sys));
        assert!(!p.gdr);
        assert_eq!(p.staging_numa, Some(0), "stage on the NIC's node");
    }
    assert_ne!(g[2].nic, g[3].nic, "SYS ties are spread");
    assert!(g.iter().all(|p| !p.gdr), "nothing is PIX/PXB here");
}

#[test]
fn one_nic_serves_every_gpu() {
    let (_d, fake) = tree();
    fake.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0).unwrap();
    fake.gpu("pci0000:00/0000:00:02.0/0000:02:00.0", 0).unwrap();
    fake.gpu("pci0000:80/0000:80:01.0/0000:81:00.0", 1).unwrap();
    fake.nic("mlx5_0", "pci0000:00/0000:00:03.0/0000:03:00.0", 0, ACTIVE).unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:01:00.0", "0000:02:00.0", "0000:81:00.0"]), &[]).unwrap();
    assert!(topo.gpus.iter().all(|p| p.nic.as_deref() == Some("mlx5_0") && p.fallbacks.is_empty()));
    assert_eq!(topo.gpus[2].tier, Some(Tier::Sys));
}

#[test]
fn no_infiniband_class_gives_placements_without_nic_and_the_reason() {
    let (_d, fake) = tree();
    fake.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0).unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:01:00.0"]), &[]).unwrap();
    assert!(topo.nics.is_empty());
    let p = &topo.gpus[0];
    assert_eq!((p.nic.as_ref(), p.tier, p.hops, p.gdr), (None, None, None, false));
    let reason = topo.no_nics_reason.clone().unwrap();
    assert!(reason.contains("sys/class/infiniband does not exist"), "{reason}");
    assert!(reason.contains("RDMA driver"), "{reason}");
    assert_eq!(topo.nic_for(0), None);
}

#[test]
fn empty_infiniband_class_says_so() {
    let (_d, fake) = tree();
    fake.infiniband_class().unwrap();
    fake.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0).unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:01:00.0"]), &[]).unwrap();
    assert_eq!(topo.gpus[0].nic, None);
    assert!(topo.no_nics_reason.unwrap().contains("is empty"));
}

#[test]
fn four_nics_rank_pix_phb_node_sys() {
    let (_d, fake) = tree();
    fake.gpu("pci0000:16/0000:16:02.0/0000:17:00.0/0000:18:00.0/0000:19:00.0", 0).unwrap();
    // Names in the reverse order of the tiers, so the name tie-break cannot produce the order.
    fake.nic("mlx5_3", "pci0000:16/0000:16:02.0/0000:17:00.0/0000:18:01.0/0000:1a:00.0", 0, ACTIVE).unwrap();
    fake.nic("mlx5_2", "pci0000:16/0000:16:03.0/0000:1b:00.0", 0, ACTIVE).unwrap();
    fake.nic("mlx5_1", "pci0000:30/0000:30:01.0/0000:31:00.0", 0, ACTIVE).unwrap();
    fake.nic("mlx5_0", "pci0000:b0/0000:b0:01.0/0000:b1:00.0", 1, ACTIVE).unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:19:00.0"]), &[]).unwrap();
    let p = &topo.gpus[0];
    assert_eq!((p.nic.as_deref(), p.tier, p.hops), (Some("mlx5_3"), Some(Tier::Pix), Some(4)));
    let got: Vec<(&str, Tier, u32)> = p.fallbacks.iter().map(|r| (r.nic.as_str(), r.tier, r.hops)).collect();
    assert_eq!(got, [("mlx5_2", Tier::Phb, 6), ("mlx5_1", Tier::Node, 8), ("mlx5_0", Tier::Sys, 8)]);
    assert_eq!(p.gpu.name, "10de:2330", "name from sysfs vendor/device ids");
    assert_eq!(topo.nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]);
    assert_eq!(topo.nics[3].bus_id.as_deref(), Some("0000:1a:00.0"));
    assert_eq!(topo.nics[0].numa, Some(1));
}

#[test]
fn nested_switches_are_pxb_and_still_gdr() {
    let (_d, fake) = tree();
    let top = "pci0000:40/0000:40:01.0/0000:41:00.0";
    fake.gpu(&format!("{top}/0000:42:00.0/0000:43:00.0/0000:44:00.0/0000:45:00.0"), 0).unwrap();
    fake.nic("mlx5_0", &format!("{top}/0000:42:01.0/0000:46:00.0"), 0, ACTIVE).unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:45:00.0"]), &[]).unwrap();
    let p = &topo.gpus[0];
    assert_eq!((p.tier, p.hops, p.gdr), (Some(Tier::Pxb), Some(6), true));
}

#[test]
fn rdma_devices_limit_the_nics_and_an_unknown_name_is_an_error_listing_what_exists() {
    let (_d, fake) = tree();
    fake.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0).unwrap();
    fake.nic("mlx5_0", "pci0000:00/0000:00:02.0/0000:02:00.0", 0, ACTIVE).unwrap();
    fake.nic("mlx5_1", "pci0000:80/0000:80:02.0/0000:82:00.0", 1, ACTIVE).unwrap();
    let topo = discover(fake.root(), &names(&["mlx5_1"]), ids(&["0000:01:00.0"]), &[]).unwrap();
    assert_eq!(topo.nics.len(), 1);
    assert_eq!(topo.nic_for(0), Some("mlx5_1"), "the far NIC, because it is the only one allowed");
    assert!(topo.gpus[0].fallbacks.is_empty());

    let err = discover(fake.root(), &names(&["mlx5_0", "mlx5_9"]), ids(&["0000:01:00.0"]), &[]).unwrap_err();
    assert!(matches!(&err, TopoError::UnknownRdmaDevice { name, .. } if name == "mlx5_9"));
    let msg = err.to_string();
    assert!(msg.contains("\"mlx5_9\"") && msg.contains("found: mlx5_0, mlx5_1"), "{msg}");
}

#[test]
fn override_replaces_the_choice_and_computed_gpus_spread_around_it() {
    let (_d, fake) = tree();
    let sw = "pci0000:16/0000:16:02.0/0000:17:00.0";
    fake.gpu(&format!("{sw}/0000:18:00.0/0000:19:00.0"), 0).unwrap();
    fake.gpu(&format!("{sw}/0000:18:01.0/0000:1a:00.0"), 0).unwrap();
    fake.nic("mlx5_0", &format!("{sw}/0000:18:02.0/0000:1b:00.0"), 0, ACTIVE).unwrap();
    fake.nic("mlx5_1", &format!("{sw}/0000:18:03.0/0000:1c:00.0"), 0, ACTIVE).unwrap();
    fake.nic("mlx5_2", "pci0000:80/0000:80:01.0/0000:81:00.0", 1, ACTIVE).unwrap();
    // GPU 1 named by an NVML-style bus id.
    let rules = parse_gpu_nic_map("00000000:1A:00.0=mlx5_0+mlx5_2").unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:19:00.0", "0000:1a:00.0"]), &rules).unwrap();
    let (g0, g1) = (&topo.gpus[0], &topo.gpus[1]);
    assert_eq!((g1.nic.as_deref(), g1.source, g1.tier), (Some("mlx5_0"), Source::Override, Some(Tier::Pix)));
    assert_eq!(fallback_names(g1), ["mlx5_2"], "an override's fallbacks are its own list");
    assert_eq!(g1.fallbacks[0].tier, Tier::Sys);
    // Without the override GPU 0 would take mlx5_0 (first by name); it takes the free one.
    assert_eq!((g0.nic.as_deref(), g0.source), (Some("mlx5_1"), Source::Computed));
    assert_eq!(fallback_names(g0), ["mlx5_0", "mlx5_2"]);
}

#[test]
fn override_naming_an_unknown_nic_or_gpu_is_rejected_with_the_name() {
    let (_d, fake) = tree();
    fake.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0).unwrap();
    fake.nic("mlx5_0", "pci0000:00/0000:00:02.0/0000:02:00.0", 0, ACTIVE).unwrap();
    let rules = parse_gpu_nic_map("0=mlx5_0+mlx5_7").unwrap();
    let err = discover(fake.root(), &[], ids(&["0000:01:00.0"]), &rules).unwrap_err().to_string();
    assert!(err.contains("\"mlx5_7\"") && err.contains("in use: mlx5_0"), "{err}");

    let rules = parse_gpu_nic_map("3=mlx5_0").unwrap();
    let err = discover(fake.root(), &[], ids(&["0000:01:00.0"]), &rules).unwrap_err().to_string();
    assert!(err.contains("GPU 3") && err.contains("0 = 0000:01:00.0"), "{err}");

    let rules = parse_gpu_nic_map("0000:99:00.0=mlx5_0").unwrap();
    let err = discover(fake.root(), &[], ids(&["0000:01:00.0"]), &rules).unwrap_err().to_string();
    assert!(err.contains("GPU 0000:99:00.0"), "{err}");
}

#[test]
fn gpu_bus_ids_are_normalised_and_bad_ones_rejected() {
    let (_d, fake) = tree();
    fake.gpu("pci0000:16/0000:16:02.0/0000:1a:00.0", 0).unwrap();
    fake.nic("mlx5_0", "pci0000:16/0000:16:03.0/0000:1b:00.0", 0, ACTIVE).unwrap();
    for id in ["00000000:1A:00.0", "0000:1A:00.0", "1a:00.0"] {
        let topo = discover(fake.root(), &[], ids(&[id]), &[]).unwrap();
        assert_eq!(topo.gpus[0].gpu.bus_id, "0000:1a:00.0", "{id}");
        assert_eq!(topo.gpus[0].tier, Some(Tier::Phb));
    }
    let gpus = vec![Gpu { index: 3, bus_id: "00000000:1A:00.0".into(), name: "NVIDIA H100".into() }];
    let topo = discover(fake.root(), &[], GpuSource::Gpus(gpus), &[]).unwrap();
    assert_eq!((topo.gpus[0].gpu.bus_id.as_str(), topo.nic_for(3)), ("0000:1a:00.0", Some("mlx5_0")));

    let err = discover(fake.root(), &[], ids(&["gpu0"]), &[]).unwrap_err();
    assert!(matches!(err, TopoError::BadGpuBusId(_)) && err.to_string().contains("\"gpu0\""), "{err}");
    let err = discover(fake.root(), &[], ids(&["1a:00.0", "0000:1A:00.0"]), &[]).unwrap_err();
    assert!(matches!(err, TopoError::DuplicateGpu(ref b) if b == "0000:1a:00.0"), "{err}");
    let err = discover(fake.root(), &[], ids(&["0000:77:00.0"]), &[]).unwrap_err().to_string();
    assert!(err.contains("0000:77:00.0") && err.contains("nvidia-smi"), "{err}");
}

#[test]
fn unknown_numa_node_is_sys_unless_the_machine_has_one_node() {
    let (_d, fake) = tree();
    fake.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0).unwrap();
    fake.nic("mlx5_0", "pci0000:20/0000:20:01.0/0000:21:00.0", -1, ACTIVE).unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:01:00.0"]), &[]).unwrap();
    assert_eq!(topo.nics[0].numa, None, "-1 is unknown, not node 4294967295");
    assert_eq!(topo.gpus[0].tier, Some(Tier::Sys));
    assert_eq!(topo.gpus[0].staging_numa, None);

    fake.numa_online("0").unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:01:00.0"]), &[]).unwrap();
    assert_eq!(topo.gpus[0].tier, Some(Tier::Node), "one node: everything is on it");
    assert_eq!(topo.nics[0].numa, None, "still reported as unknown");
}

#[test]
fn inactive_nic_is_listed_but_ranked_after_active_ones() {
    let (_d, fake) = tree();
    let sw = "pci0000:16/0000:16:02.0/0000:17:00.0";
    fake.gpu(&format!("{sw}/0000:18:00.0/0000:19:00.0"), 0).unwrap();
    fake.nic("mlx5_0", &format!("{sw}/0000:18:01.0/0000:1a:00.0"), 0, &["1: DOWN", "1: DOWN"]).unwrap();
    fake.nic("mlx5_1", "pci0000:80/0000:80:01.0/0000:81:00.0", 1, &["1: DOWN", "4: ACTIVE"]).unwrap();
    let topo = discover(fake.root(), &[], ids(&["0000:19:00.0"]), &[]).unwrap();
    let p = &topo.gpus[0];
    assert_eq!((p.nic.as_deref(), p.tier), (Some("mlx5_1"), Some(Tier::Sys)), "active SYS beats inactive PIX");
    assert_eq!(p.fallbacks, [Route { nic: "mlx5_0".into(), tier: Tier::Pix, hops: 4 }]);
    let n0 = &topo.nics[0];
    assert_eq!((n0.active, n0.ports, n0.ports_active), (false, 2, 0));
    let n1 = &topo.nics[1];
    assert_eq!((n1.active, n1.ports, n1.ports_active), (true, 2, 1));
}

#[test]
fn nvml_without_a_driver_is_an_empty_list_with_a_reason_not_a_panic() {
    // On a GPU host this lists the real GPUs; on this project's CI host there is no driver.
    let topo = discover(Path::new("/"), &[], GpuSource::Nvml, &[]).unwrap();
    assert_eq!(topo.gpus.is_empty(), topo.no_gpus_reason.is_some(), "{:?}", topo.no_gpus_reason);
    if let Some(r) = &topo.no_gpus_reason {
        assert!(r.contains("NVML"), "{r}");
    }
}

#[test]
fn tier_display_json_and_gdr_threshold() {
    let all = [Tier::Pix, Tier::Pxb, Tier::Phb, Tier::Node, Tier::Sys];
    let shown: Vec<String> = all.iter().map(Tier::to_string).collect();
    assert_eq!(shown, ["PIX", "PXB", "PHB", "NODE", "SYS"]);
    let json: Vec<String> = all.iter().map(|t| serde_json::to_string(t).unwrap()).collect();
    assert_eq!(json, ["\"PIX\"", "\"PXB\"", "\"PHB\"", "\"NODE\"", "\"SYS\""]);
    assert_eq!(all.map(Tier::gdr), [true, true, false, false, false]);
    assert!(Tier::Pix < Tier::Sys);
}

#[test]
fn bdf_components_are_told_from_host_bridges() {
    assert!(sysfs::is_bdf("0000:17:00.0"));
    assert!(sysfs::is_bdf("0000:ab:1f.7"));
    assert!(!sysfs::is_bdf("pci0000:16"));
    assert!(!sysfs::is_bdf("0000:17:00"));
    assert!(!sysfs::is_bdf("infiniband"));
    assert!(!sysfs::is_bdf("0000:17:0g.0"));
}

#[test]
fn cuda_visible_devices_renumbers_nvml_gpus_as_cuda_sees_them() {
    let nvml: Vec<Gpu> =
        (0..4).map(|i| Gpu { index: i, bus_id: format!("0000:{:02x}:00.0", 0x10 + i), name: String::new() }).collect();
    assert_eq!(cuda_view(nvml.clone(), None), nvml);
    let v = cuda_view(nvml.clone(), Some("2,0"));
    assert_eq!(
        v.iter().map(|g| (g.index, g.bus_id.as_str())).collect::<Vec<_>>(),
        [(0, "0000:12:00.0"), (1, "0000:10:00.0")]
    );
    assert_eq!(cuda_view(nvml.clone(), Some("1,7,2")).len(), 1, "CUDA stops at the first bad index");
    assert!(cuda_view(nvml.clone(), Some("")).is_empty());
    assert_eq!(cuda_view(nvml.clone(), Some("GPU-8f6c1a2b")), nvml, "UUIDs cannot be matched: unchanged");
}

#[test]
fn chooser_without_nics_answers_none_and_with_a_bad_plan_falls_back_to_none() {
    let (_d, fake) = tree();
    assert_eq!(chooser(fake.root(), &[], &[])(0), None);
    // mlx5_0 is not in this tree: the plan fails, the chooser still answers.
    assert_eq!(chooser(fake.root(), &names(&["mlx5_0"]), &[])(0), None);
}
