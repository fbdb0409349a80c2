//! scripts/launch-dynamo-memkv.sh: its checks and the docker command it builds, run in dry-run
//! mode (and once for real against a stand-in `docker` that records its arguments), with real
//! `memkv-server` nodes on 127.0.5.x answering the health probes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Creds, Node};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/launch-dynamo-memkv.sh");

struct Setup {
    creds: Creds,
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl Setup {
    /// Two nodes with the production port layout (admin = data port + 1), a model directory and
    /// a plugin file.
    fn new(ips: [&str; 2]) -> Self {
        let creds = Creds::new();
        let nodes = ips
            .iter()
            .map(|ip| Node::start_on(&creds, ip, "9960", &["--admin-listen", &format!("{ip}:9961")]))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("Llama-3.1-8B")).unwrap();
        std::fs::write(dir.path().join("libplugin_MEMKV.so"), b"\x7fELF").unwrap();
        Self { creds, nodes, dir }
    }

    fn servers(&self) -> String {
        self.nodes.iter().map(|n| n.data.to_string()).collect::<Vec<_>>().join(",")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs the launcher with a clean environment: PATH, the cluster settings, and `env`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("MEMKV_SERVERS", self.servers())
            .env("MEMKV_AUTH_KEY", &self.creds.auth_key)
            .env("MEMKV_LICENSE", &self.creds.license_path)
            .env("MEMKV_PLUGIN", self.path("libplugin_MEMKV.so"))
            .env("DYNAMO_IMAGE", "nvcr.io/nvidia/ai-dynamo/vllm-runtime:test");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("bash")
    }

    fn model(&self) -> String {
        self.path("Llama-3.1-8B")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn dry_run_prints_the_integration_page_command() {
    let s = Setup::new(["127.0.5.1", "127.0.5.2"]);
    let model = s.model();
    let out = s.run(
        &["--dry-run", "--model", &model, "--tp", "2", "--max-model-len", "4096"],
        &[("MEMKV_NAMESPACE", "llama-8b"), ("MEMKV_RDMA_DEVICES", "mlx5_0,mlx5_1")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cmd = text(&out.stdout);
    let plugin = std::fs::canonicalize(s.path("libplugin_MEMKV.so")).unwrap();
    let license = std::fs::canonicalize(&s.creds.license_path).unwrap();
    let model_dir = std::fs::canonicalize(&model).unwrap();
    for piece in [
        "docker run --rm --name memkv-dynamo --runtime=nvidia --gpus all --net=host --shm-size=64g --ipc=host",
        // MEMKV_TRANSPORT defaults to auto: the RDMA device and memlock flags are in.
        "--device=/dev/infiniband --cap-add=IPC_LOCK --ulimit memlock=-1",
        &format!("-v {}:/opt/nvidia/nvda_nixl/lib/plugins/libplugin_MEMKV.so:ro", plugin.display()),
        &format!("-v {}:/etc/memkv/minio.license:ro", license.display()),
        &format!("-v {}:/models/Llama-3.1-8B:ro", model_dir.display()),
        "-e DYN_KVBM_NIXL_BACKEND=MEMKV -e DYN_KVBM_REMOTE_STORAGE_TYPE=memkv -e DYN_KVBM_CPU_CACHE_GB=60",
        "-e MEMKV_LICENSE=/etc/memkv/minio.license",
        "-e MEMKV_AUTH_KEY ",
        "-e MEMKV_NAMESPACE ",
        "-e MEMKV_RDMA_DEVICES ",
        "-e MEMKV_SERVERS ",
        " nvcr.io/nvidia/ai-dynamo/vllm-runtime:test bash -c ",
        "apt-get install -y -qq libucx0",
        "exec dynamo serve /models/Llama-3.1-8B --host 0.0.0.0 --port 8810 --tensor-parallel-size 2 \
         --enable-prefix-caching --max-model-len 4096 --gpu-memory-utilization 0.9",
    ] {
        assert!(cmd.contains(piece), "missing {piece:?} in\n{cmd}");
    }
    assert!(!cmd.contains(&s.creds.auth_key), "the cluster key's value must not appear in the command");
    assert!(!cmd.contains("-e MEMKV_PLUGIN"), "{cmd}");

    // tcp: no RDMA flags. Overlays: mounted over the image's kvbm package.
    std::fs::write(s.path("lib_core.so"), b"so").unwrap();
    std::fs::create_dir(s.path("kvbm-overlay")).unwrap();
    let (core, py) = (s.path("lib_core.so"), s.path("kvbm-overlay"));
    let out = s.run(
        &["--dry-run", "--model", &model, "--port", "8811", "--cpu-cache-gb", "12"],
        &[("MEMKV_TRANSPORT", "tcp"), ("KVBM_CORE_SO", &core), ("KVBM_PY_SRC", &py)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cmd = text(&out.stdout);
    assert!(!cmd.contains("/dev/infiniband") && !cmd.contains("IPC_LOCK"), "{cmd}");
    let kvbm = "/opt/dynamo/venv/lib/python3.12/site-packages/kvbm";
    assert!(cmd.contains(&format!("{}:{kvbm}:ro", std::fs::canonicalize(&py).unwrap().display())), "{cmd}");
    assert!(cmd.contains(&format!("{}:{kvbm}/_core.abi3.so:ro", std::fs::canonicalize(&core).unwrap().display())));
    assert!(cmd.contains("--port 8811") && cmd.contains("DYN_KVBM_CPU_CACHE_GB=12"), "{cmd}");

    // shm (same-host nodes only): accepted, and no RDMA flags either.
    let out = s.run(&["--dry-run", "--model", &model], &[("MEMKV_TRANSPORT", "SHM")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cmd = text(&out.stdout);
    assert!(!cmd.contains("/dev/infiniband") && !cmd.contains("IPC_LOCK"), "{cmd}");
    assert!(cmd.contains("--net=host") && cmd.contains("-e MEMKV_TRANSPORT "), "{cmd}");
}

#[test]
fn without_dry_run_it_runs_exactly_that_command() {
    let s = Setup::new(["127.0.5.3", "127.0.5.4"]);
    let bin = s.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = s.path("docker-args");
    std::fs::write(bin.join("docker"), format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n")).unwrap();
    Command::new("chmod").arg("+x").arg(bin.join("docker")).status().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let model = s.model();
    let dry = s.run(&["--dry-run", "--model", &model], &[("PATH", &path)]);
    let out = s.run(&["--model", &model], &[("PATH", &path)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The printed line, split by the shell, is exactly what docker received.
    let split = Command::new("bash")
        .arg("-c")
        .arg(format!("set -- {}; shift; printf '%s\\n' \"$@\"", text(&dry.stdout).trim()))
        .output()
        .unwrap();
    assert_eq!(text(&split.stdout), std::fs::read_to_string(&record).unwrap());
    assert!(Path::new(&record).exists());
}

/// Launcher arguments, extra environment, and the line expected on stderr.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn every_problem_is_reported_before_anything_starts() {
    let s = Setup::new(["127.0.5.5", "127.0.5.6"]);
    let model = s.model();
    let cases: &[Case<'_>] = &[
        (&["--dry-run"], &[], "--model is required"),
        (&["--dry-run", "--model", "/nonexistent/m"], &[], "model directory /nonexistent/m does not exist"),
        (
            &["--dry-run", "--model", &model],
            &[("MEMKV_PLUGIN", "/nonexistent/p.so")],
            "NIXL plugin /nonexistent/p.so not found",
        ),
        (
            &["--dry-run", "--model", &model],
            &[("MEMKV_LICENSE", "/nonexistent/l")],
            "license file /nonexistent/l does not exist",
        ),
        (
            &["--dry-run", "--model", &model],
            &[("MEMKV_AUTH_KEY", "abc123")],
            "MEMKV_AUTH_KEY is malformed: expected 64 hex characters, got 6",
        ),
        (
            &["--dry-run", "--model", &model],
            &[("MEMKV_SERVERS", "127.0.5.9:9")],
            "MemKV node 127.0.5.9:9 is not healthy: http://127.0.5.9:10/v1/health",
        ),
        (
            &["--dry-run", "--model", &model],
            &[("MEMKV_TRANSPORT", "ib")],
            "MEMKV_TRANSPORT=ib: expected auto, rdma, shm or tcp",
        ),
        (
            &["--dry-run", "--model", &model],
            &[("KVBM_CORE_SO", "/nonexistent/c.so")],
            "KVBM_CORE_SO=/nonexistent/c.so does not exist",
        ),
        (&["--dry-run", "--model", &model, "--tp", "zero"], &[], "--tp zero: expected a positive integer"),
        (&["--dry-run", "--model", &model], &[("DYNAMO_IMAGE", "")], "no Dynamo image"),
        (&["--dry-run", "--model", &model, "--bogus"], &[], "unknown option --bogus"),
    ];
    for (args, env, want) in cases {
        let out = s.run(args, env);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(want), "{args:?} {env:?}: wanted {want:?} in\n{err}");
        assert!(out.stdout.is_empty(), "nothing printed or started: {}", text(&out.stdout));
    }
    // Several problems at once: each on its own line.
    let out = s.run(&["--dry-run"], &[("MEMKV_AUTH_KEY", ""), ("MEMKV_SERVERS", "")]);
    let err = text(&out.stderr);
    assert!(
        err.lines().count() >= 3
            && err.contains("MEMKV_AUTH_KEY is not set")
            && err.contains("MEMKV_SERVERS is not set")
    );
    // --skip-health-check plans without the nodes.
    let out = s.run(&["--dry-run", "--model", &model, "--skip-health-check"], &[("MEMKV_SERVERS", "127.0.5.9:9")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
