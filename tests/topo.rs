//! `memkv topo` end to end: the real binary over fake sysfs trees (`--sysfs-root`, `--gpus`), its
//! table and JSON, overrides from the flag and the variable, one-line refusals of bad input, and a
//! plain run on this host, which needs no cluster, key or license.
//!
//! Every process runs with a cleared environment plus exactly what its case needs, and is waited
//! for with a deadline (killed and failed past it).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memkv::topo::testing::FakeSysfs;

const DEADLINE: Duration = Duration::from_secs(20);
const ACTIVE: &[&str] = &["4: ACTIVE"];
/// The switch shared by GPUs 0000:19:00.0, 0000:1a:00.0 and NICs mlx5_0, mlx5_1.
const SW: &str = "pci0000:16/0000:16:02.0/0000:17:00.0";
const GPUS: &str = "0000:19:00.0,0000:1A:00.0";

/// What a finished `memkv` left behind.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `memkv args` with exactly `env`; kills it and fails past [`DEADLINE`].
fn memkv(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memkv"));
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn memkv");
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout pipe")));
    let err = reader(Box::new(child.stderr.take().expect("stderr pipe")));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("memkv {args:?} ran past {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out { code: status.code(), stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Two GPUs and two NICs behind one switch on socket 0, one inactive NIC on socket 1.
fn box_with_switch() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path()).unwrap();
    fake.gpu(&format!("{SW}/0000:18:00.0/0000:19:00.0"), 0).unwrap();
    fake.gpu(&format!("{SW}/0000:18:01.0/0000:1a:00.0"), 0).unwrap();
    fake.nic("mlx5_0", &format!("{SW}/0000:18:02.0/0000:1b:00.0"), 0, ACTIVE).unwrap();
    fake.nic("mlx5_1", &format!("{SW}/0000:18:03.0/0000:1c:00.0"), 0, ACTIVE).unwrap();
    fake.nic("mlx5_2", "pci0000:80/0000:80:01.0/0000:81:00.0", 1, &["1: DOWN"]).unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    (dir, root)
}

/// The table row whose first cell is `first`, split on runs of two or more spaces.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    let line = text.lines().find(|l| l.split("  ").next() == Some(first)).unwrap_or_else(|| panic!("no row {first}"));
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
}

#[test]
fn table_gives_each_gpu_its_own_nic_behind_the_switch_and_lists_the_nics() {
    let (_dir, root) = box_with_switch();
    let out = memkv(&["topo", "--sysfs-root", &root, "--gpus", GPUS], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let header = out.stdout.lines().next().unwrap_or("");
    let cols: Vec<&str> = header.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(cols, ["GPU", "BUS ID", "NAME", "NIC", "PATH", "HOPS", "GDR", "FALLBACKS", "SOURCE"], "{out:?}");
    assert_eq!(
        row(&out.stdout, "0"),
        ["0", "0000:19:00.0", "10de:2330", "mlx5_0", "PIX", "4", "yes", "mlx5_1(PIX),mlx5_2(SYS)", "computed"]
    );
    assert_eq!(
        row(&out.stdout, "1"),
        ["1", "0000:1a:00.0", "10de:2330", "mlx5_1", "PIX", "4", "yes", "mlx5_0(PIX),mlx5_2(SYS)", "computed"]
    );
    assert_eq!(row(&out.stdout, "NIC"), ["NIC", "BUS ID", "NUMA", "PORTS ACTIVE"]);
    assert_eq!(row(&out.stdout, "mlx5_0"), ["mlx5_0", "0000:1b:00.0", "0", "1/1"]);
    let far = row(&out.stdout, "mlx5_2");
    assert_eq!(far[..3], ["mlx5_2", "0000:81:00.0", "1"]);
    assert!(far[3].starts_with("0/1 (no active port"), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn json_is_one_document_with_placements_nics_and_reasons() {
    let (_dir, root) = box_with_switch();
    let out = memkv(&["topo", "--json", "--sysfs-root", &root, "--gpus", GPUS], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let g0 = &doc["gpus"][0];
    assert_eq!(g0["gpu"]["bus_id"], "0000:19:00.0");
    assert_eq!((g0["nic"].as_str(), g0["tier"].as_str(), g0["hops"].as_u64()), (Some("mlx5_0"), Some("PIX"), Some(4)));
    assert_eq!((g0["gdr"].as_bool(), g0["source"].as_str()), (Some(true), Some("computed")));
    assert_eq!(g0["fallbacks"][1], serde_json::json!({"nic": "mlx5_2", "tier": "SYS", "hops": 8}));
    assert_eq!(doc["gpus"][1]["nic"], "mlx5_1");
    let nics: Vec<&str> = doc["nics"].as_array().unwrap().iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(nics, ["mlx5_0", "mlx5_1", "mlx5_2"]);
    assert_eq!(doc["nics"][2]["active"], false);
    assert!(doc["no_gpus_reason"].is_null() && doc["no_nics_reason"].is_null(), "{out:?}");
}

#[test]
fn override_from_the_flag_or_the_variable_marks_the_row() {
    let (_dir, root) = box_with_switch();
    let base = ["topo", "--sysfs-root", root.as_str(), "--gpus", GPUS];
    let out = memkv(&[&base[..], &["--gpu-nic-map", "0=mlx5_1+mlx5_2"]].concat(), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        row(&out.stdout, "0"),
        ["0", "0000:19:00.0", "10de:2330", "mlx5_1", "PIX", "4", "yes", "mlx5_2(SYS)", "override"]
    );
    assert_eq!(row(&out.stdout, "1")[3], "mlx5_0", "the computed GPU takes the NIC the override left free");

    let out = memkv(&base, &[("MEMKV_GPU_NIC_MAP", "0000:1a:00.0=mlx5_2")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let r = row(&out.stdout, "1");
    assert_eq!((r[3], r[4], r[6], r[8]), ("mlx5_2", "SYS", "no", "override"), "{out:?}");
    assert!(out.stdout.contains("GPU 1 via NUMA node 1"), "staging advice for the non-GDR row: {out:?}");
}

#[test]
fn rdma_devices_from_the_flag_or_the_variable_limit_the_nics() {
    let (_dir, root) = box_with_switch();
    let base = ["topo", "--sysfs-root", root.as_str(), "--gpus", GPUS];
    let out = memkv(&[&base[..], &["--rdma-devices", "mlx5_1"]].concat(), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(row(&out.stdout, "0")[3], "mlx5_1");
    assert_eq!(row(&out.stdout, "1")[3], "mlx5_1");
    assert!(!out.stdout.contains("mlx5_0"), "{out:?}");
    let out = memkv(&base, &[("MEMKV_RDMA_DEVICES", "mlx5_2")]);
    assert_eq!(row(&out.stdout, "0")[3], "mlx5_2", "{out:?}");
}

#[test]
fn bad_input_exits_2_with_one_line_naming_the_problem() {
    let (_dir, root) = box_with_switch();
    let base = ["topo", "--sysfs-root", root.as_str(), "--gpus", GPUS];
    let cases: &[Case] = &[
        (&["--rdma-devices", "mlx5_9"], &[], &["--rdma-devices", "\"mlx5_9\"", "found: mlx5_0, mlx5_1, mlx5_2"]),
        (&[], &[("MEMKV_RDMA_DEVICES", "mlx5_0,mlx5_9")], &["MEMKV_RDMA_DEVICES", "\"mlx5_9\""]),
        (&["--rdma-devices", "mlx5 0"], &[], &["--rdma-devices", "not an RDMA device name"]),
        (&["--gpu-nic-map", "0"], &[], &["--gpu-nic-map", "no `=`"]),
        (&["--gpu-nic-map", "0=mlx5_7"], &[], &["--gpu-nic-map", "\"mlx5_7\"", "in use: mlx5_0, mlx5_1, mlx5_2"]),
        (&["--gpu-nic-map", "5=mlx5_0"], &[], &["GPU 5", "0 = 0000:19:00.0, 1 = 0000:1a:00.0"]),
        (&[], &[("MEMKV_GPU_NIC_MAP", "0=mlx5_0,0=mlx5_1")], &["MEMKV_GPU_NIC_MAP", "mapped twice"]),
    ];
    for (extra, env, wanted) in cases {
        let out = memkv(&[&base[..], extra].concat(), env);
        check_refusal(&out, wanted);
    }
    for (gpus, wanted) in [
        ("zz", &["--gpus", "\"zz\" is not a PCI address"][..]),
        ("0000:19:00.0,19:00.0", &["--gpus", "0000:19:00.0 is listed twice"]),
        ("0000:77:00.0", &["--gpus", "0000:77:00.0 is not a PCI device here"]),
    ] {
        let out = memkv(&["topo", "--sysfs-root", &root, "--gpus", gpus], &[]);
        check_refusal(&out, wanted);
    }
}

/// Extra flags, environment, and what the error line must contain.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);

fn check_refusal(out: &Out, wanted: &[&str]) {
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "one line: {out:?}");
    assert!(out.stderr.starts_with("memkv: "), "{out:?}");
    for w in wanted {
        assert!(out.stderr.contains(w), "wanted {w:?}: {out:?}");
    }
}

#[test]
fn tree_without_rdma_says_so_and_still_plans_the_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path()).unwrap();
    fake.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0).unwrap();
    let root = dir.path().to_str().unwrap();
    let out = memkv(&["topo", "--sysfs-root", root, "--gpus", "01:00.0"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(row(&out.stdout, "0"), ["0", "0000:01:00.0", "10de:2330", "-", "-", "-", "-", "-", "computed"]);
    assert!(
        out.stdout.contains("no RDMA NICs: ") && out.stdout.contains("sys/class/infiniband does not exist"),
        "{out:?}"
    );
}

/// This host as it is: on the project's CI machine (no GPU, no RDMA) both reasons are printed; on
/// a GPU or RDMA host the corresponding table appears instead. Either way no cluster settings are
/// needed.
#[test]
fn plain_run_on_this_host_needs_no_cluster_and_explains_what_is_missing() {
    let out = memkv(&["topo"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    if out.stdout.starts_with("no GPUs: ") {
        assert!(out.stdout.contains("pass --gpus BDF[,BDF...] to plan for given bus ids"), "{out:?}");
    } else {
        assert!(out.stdout.starts_with("GPU  "), "{out:?}");
    }
    if std::path::Path::new("/sys/class/infiniband").exists() {
        assert!(out.stdout.contains("\nNIC  ") || out.stdout.contains("no RDMA NICs: "), "{out:?}");
    } else {
        assert!(out.stdout.contains("no RDMA NICs: /sys/class/infiniband does not exist"), "{out:?}");
    }
    let json = memkv(&["topo", "--json"], &[]);
    assert_eq!(json.code, Some(0), "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    assert_eq!(doc["gpus"].as_array().map(Vec::len) == Some(0), doc["no_gpus_reason"].is_string(), "{json:?}");
}
