//! `memkv bench --gpu` on a host without a GPU: it must say so and why (the driver's own reason)
//! and exit 2, before it resolves the cluster settings or the license or connects anywhere. The
//! measurement itself needs an NVIDIA GPU and a cluster: run `memkv bench --gpu` there (see
//! docs/benchmarks.md, "GPU host (issue 5)").

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memkv::mem::MemError;

/// How long the refusal may take; it touches neither the network nor GPU memory.
const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn bench_gpu_without_a_driver_exits_2_naming_the_reason_before_touching_the_cluster() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!(
            "skipped: this host has an NVIDIA GPU (/dev/nvidia0); measure it with `memkv bench --gpu` against a \
             cluster (docs/benchmarks.md, \"GPU host (issue 5)\")"
        );
        return;
    }
    // What the library says about this host's driver is what the command must print.
    let why = match memkv::mem::cuda::cuda() {
        Err(MemError::CudaUnavailable(why)) => why,
        other => panic!("no /dev/nvidia0, yet the CUDA driver answered {other:?}"),
    };
    // An unreachable node and a license that does not exist: the GPU check must come first, so
    // neither may show up in the output.
    let key = "5f3c9a1e7b2d4086e1f9a3c5b7d90e2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c0e2d";
    let mut child = Command::new(env!("CARGO_BIN_EXE_memkv"))
        .args(["bench", "--gpu", "--servers", "127.0.0.1:1", "--auth-key", key, "--license", "x"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memkv");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for memkv") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`memkv bench --gpu` did not exit within {DEADLINE:?} on a host without a GPU");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().expect("stdout pipe").read_to_string(&mut out).expect("read stdout");
    child.stderr.take().expect("stderr pipe").read_to_string(&mut err).expect("read stderr");
    assert_eq!(status.code(), Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(err.trim_end(), format!("memkv bench --gpu needs a GPU: {why}"), "stdout:\n{out}");
    assert!(out.is_empty(), "nothing is measured, so nothing goes to stdout: {out}");
}
