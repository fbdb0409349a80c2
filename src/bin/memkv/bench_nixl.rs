//! `memkv bench --via nixl`: the PUT (NIXL WRITE, offload) and GET (NIXL READ, onboard) phases
//! driven through the real NIXL agent and `libplugin_MEMKV.so`, by the Python driver
//! `benches/nixl_kv.py`, which this binary embeds so that `memkv` works outside the repository.
//!
//! Owns: finding the plugin directory and a Python with the nixl-cu12 wheel, mapping the bench
//! flags onto the driver's, handing the cluster settings to the plugin as `MEMKV_*` variables,
//! running the driver under a deadline and turning its JSON lines into [`PhaseResult`] rows.
//! Never: invents a figure the driver did not measure, or retries a failed run.
//!
//! The mapping (documented in `docs/benchmarks.md`):
//! - `--inflight N` → requests of `min(N, 16)` blocks (KVBM's batch), `max(1, N / batch)` of them
//!   in flight; the row's `inflight` is what really was in flight (`batch × requests`).
//! - `--count` → at most that many blocks per phase, rounded up to whole requests.
//! - a row's `ops` are blocks; its latency percentiles are those of one NIXL request (post to the
//!   poll that sees it DONE; the driver polls again after 1/10 of the last request's latency,
//!   20 µs to 2 ms); `misses` is always 0 (the plugin fails a READ of an absent block, which
//!   counts as an error).
//! - `--verify-every 0` skips the comparison; any other value compares every block of the pool
//!   once, after the READ phase (the last READ of each); a differing block is an error of the
//!   `get` row, so the command exits 1 as a raw verify failure does.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use memkv::config::format_size;

use crate::bench::PhaseResult;

/// The driver, as run: `python -c DRIVER ARGS...`.
pub(crate) const DRIVER: &str = include_str!("../../../benches/nixl_kv.py");
/// Blocks per NIXL request at most (KVBM offloads in batches of 16 blocks).
pub(crate) const BATCH: usize = 16;
/// The plugin NIXL loads for backend MEMKV.
pub(crate) const PLUGIN_FILE: &str = "libplugin_MEMKV.so";
/// The driver keeps a source and a destination pool of `inflight` blocks each.
const POOL_BUDGET: u64 = 4 << 30;
/// How long `--check` (importing nixl) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// Slack per size on top of its phases (agent start, pool filling, registration, the fill).
const SLACK_PER_SIZE: Duration = Duration::from_secs(60);

const NEEDS_PYTHON: &str = "memkv bench --via nixl needs Python with the nixl-cu12 wheel: run scripts/nixl-venv.sh \
     1.5.1 and pass --python .venv/nixl-1.5.1/bin/python (or set MEMKV_PYTHON)";
const BUILD_PLUGIN: &str = "build it with `cargo build --release -p memkv-nixl` and pass the directory holding it \
     (target/release) with --nixl-plugin-dir or NIXL_PLUGIN_DIR";

/// `(blocks per request, requests in flight)` for `--inflight n`.
pub(crate) fn shape(inflight: usize) -> (usize, usize) {
    let batch = inflight.clamp(1, BATCH);
    (batch, (inflight / batch).max(1))
}

/// The directory NIXL loads the plugin from: `flag`, else `env` (NIXL_PLUGIN_DIR), else the
/// directory of `exe` (the running `memkv`) when it holds the plugin.
pub(crate) fn plugin_dir(flag: Option<&Path>, env: Option<OsString>, exe: Option<PathBuf>) -> Result<PathBuf> {
    let (dir, from) = match (flag, env.filter(|v| !v.is_empty())) {
        (Some(d), _) => (d.to_path_buf(), "--nixl-plugin-dir"),
        (None, Some(d)) => (PathBuf::from(d), "NIXL_PLUGIN_DIR"),
        (None, None) => {
            let dir = exe.as_deref().and_then(Path::parent).map(Path::to_path_buf);
            match dir {
                Some(d) if d.join(PLUGIN_FILE).is_file() => (d, "the directory of memkv"),
                Some(d) => bail!(
                    "memkv bench --via nixl cannot find libplugin_MEMKV.so: NIXL_PLUGIN_DIR is not set and {} (where memkv \
                     is) has none; {BUILD_PLUGIN}",
                    d.display()
                ),
                None => bail!(
                    "memkv bench --via nixl cannot find libplugin_MEMKV.so: NIXL_PLUGIN_DIR is not set; {BUILD_PLUGIN}"
                ),
            }
        }
    };
    if !dir.join(PLUGIN_FILE).is_file() {
        bail!("memkv bench --via nixl: {} (from {from}) holds no libplugin_MEMKV.so; {BUILD_PLUGIN}", dir.display());
    }
    // NIXL is handed the directory through the environment of another process: make it absolute.
    std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))
}

/// The Python to run the driver with: `flag`, else `env` (MEMKV_PYTHON), else `python3`.
pub(crate) fn python(flag: Option<&Path>, env: Option<OsString>) -> OsString {
    flag.map(|p| p.as_os_str().to_owned()).or(env.filter(|v| !v.is_empty())).unwrap_or_else(|| "python3".into())
}

/// Runs `python -c DRIVER --check`; returns the nixl-cu12 version, or the error naming the fix.
pub(crate) fn check_python(python: &OsString) -> Result<String> {
    let shown = Path::new(python).display().to_string();
    let out = run_bounded(
        Command::new(python).arg("-c").arg(DRIVER).arg("--check").stdin(Stdio::null()),
        CHECK_TIMEOUT,
        |_| {},
    )
    .map_err(|e| anyhow::anyhow!("{NEEDS_PYTHON} ({shown}: {e})"))?;
    let version = out.stdout.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        Some(v["nixl"].as_str()?.to_string())
    });
    match (out.code, version) {
        (Some(0), Some(v)) => Ok(v),
        _ if out.timed_out => bail!("{NEEDS_PYTHON} ({shown} did not answer within {CHECK_TIMEOUT:?})"),
        (code, _) => {
            let why = last_line(&out.stderr).unwrap_or("no output");
            let code = code.map_or("a signal".to_string(), |c| c.to_string());
            bail!("{NEEDS_PYTHON} ({shown} exited {code}: {why})")
        }
    }
}

/// The `MEMKV_*` variables that carry this command's flags to the plugin (which reads the same
/// settings as the CLI), plus `MEMKV_NUM_CONNECTIONS` for `--connections`. The driver inherits
/// the rest of the environment, `MEMKV_*` variables included.
pub(crate) fn cluster_env(explicit: &BTreeMap<String, String>, connections: usize) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = explicit
        .iter()
        .map(|(k, v)| {
            let var = memkv::config::find_param(k)
                .map_or_else(|| format!("MEMKV_{}", k.to_uppercase()), |p| p.env.to_string());
            (var, v.clone())
        })
        .collect();
    env.insert("MEMKV_NUM_CONNECTIONS".to_string(), connections.to_string());
    env.into_iter().collect()
}

/// What one driver run measures.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) sizes: Vec<u64>,
    /// `both`, `put` or `get`.
    pub(crate) op: &'static str,
    pub(crate) duration: f64,
    pub(crate) max_blocks: u64,
    pub(crate) verify: bool,
    pub(crate) batch: usize,
    pub(crate) handles: usize,
    pub(crate) connections: usize,
}

impl Plan {
    /// The driver's command line (after `-c DRIVER`).
    pub(crate) fn args(&self) -> Vec<String> {
        let sizes: Vec<String> = self.sizes.iter().map(u64::to_string).collect();
        let mut a = vec![
            "--json".to_string(),
            "--size".to_string(),
            sizes.join(","),
            "--batch".to_string(),
            self.batch.to_string(),
            "--handles".to_string(),
            self.handles.to_string(),
            "--duration".to_string(),
            self.duration.to_string(),
            "--op".to_string(),
            self.op.to_string(),
            "--max-blocks".to_string(),
            self.max_blocks.to_string(),
        ];
        if !self.verify {
            a.push("--no-verify".to_string());
        }
        a
    }

    /// Refuses a plan whose two pools would not fit [`POOL_BUDGET`].
    pub(crate) fn check_memory(&self) -> Result<()> {
        let blocks = (self.batch * self.handles) as u64;
        if let Some(&largest) = self.sizes.iter().max() {
            let need = 2u128 * blocks as u128 * largest as u128;
            if need > POOL_BUDGET as u128 {
                bail!(
                    "--via nixl keeps a source and a destination pool of {blocks} blocks each: {blocks} x {} x 2 = {} \
                     is more than {}; lower --inflight or --size",
                    format_size(largest),
                    format_size(need.min(u64::MAX as u128) as u64),
                    format_size(POOL_BUDGET)
                );
            }
        }
        Ok(())
    }

    fn deadline(&self) -> Duration {
        let phases = if self.op == "both" { 2.0 } else { 1.0 };
        let per_size = Duration::from_secs_f64(phases * self.duration) + SLACK_PER_SIZE;
        per_size * self.sizes.len() as u32 + SLACK_PER_SIZE
    }
}

/// One size's result line from the driver (the fields this command reads).
#[derive(Debug, serde::Deserialize)]
struct SizeOut {
    block_bytes: u64,
    batch: usize,
    handles: usize,
    phases: Vec<PhaseOut>,
}

#[derive(Debug, serde::Deserialize)]
struct PhaseOut {
    op: String,
    blocks: u64,
    seconds: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    errors: u64,
    first_error: Option<String>,
}

/// The rows of the driver's JSON lines (other lines, NIXL's own logging, are skipped), checked
/// against the plan: one result per size, in order, with the planned phases.
pub(crate) fn parse_rows(stdout: &str, plan: &Plan) -> Result<Vec<PhaseResult>> {
    let mut rows = Vec::new();
    let outs: Vec<SizeOut> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("the NIXL driver printed an unreadable result: {l}")))
        .collect::<Result<_>>()?;
    let want: &[&str] = match plan.op {
        "put" => &["put"],
        "get" => &["get"],
        _ => &["put", "get"],
    };
    if outs.len() != plan.sizes.len() {
        bail!("the NIXL driver printed results for {} of {} sizes", outs.len(), plan.sizes.len());
    }
    for (out, &size) in outs.iter().zip(&plan.sizes) {
        let ops: Vec<&str> = out.phases.iter().map(|p| p.op.as_str()).collect();
        if out.block_bytes != size || ops != want {
            bail!(
                "the NIXL driver answered {} phases {ops:?} where {} phases {want:?} were asked",
                format_size(out.block_bytes),
                format_size(size)
            );
        }
        for p in &out.phases {
            if let Some(e) = p.first_error.as_deref() {
                eprintln!("memkv bench --via nixl: {} {}: {} blocks failed: {e}", p.op, format_size(size), p.errors);
            }
            let secs = if p.seconds > 0.0 { p.seconds } else { f64::MIN_POSITIVE };
            rows.push(PhaseResult {
                op: if p.op == "put" { "put" } else { "get" },
                size_bytes: size,
                ops: p.blocks,
                seconds: p.seconds,
                gib_per_s: (p.blocks * size) as f64 / secs / (1u64 << 30) as f64,
                ops_per_s: p.blocks as f64 / secs,
                // No request completed: no latency, like a raw phase without operations.
                p50_us: p.p50_us.unwrap_or(0.0),
                p99_us: p.p99_us.unwrap_or(0.0),
                p999_us: p.p999_us.unwrap_or(0.0),
                misses: 0,
                errors: p.errors,
                connections: plan.connections,
                inflight: out.batch * out.handles,
                batch: out.batch,
            });
        }
    }
    Ok(rows)
}

/// Runs the driver for `plan` with `python`, NIXL_PLUGIN_DIR=`plugin_dir` and `env` on top of
/// this process's environment; `bar` shows which size is running. Returns the rows (errors in
/// them are for the caller to judge) or the error naming the fix.
pub(crate) fn run(
    python: &OsString,
    plugin_dir: &Path,
    env: &[(String, String)],
    plan: &Plan,
    bar: &ProgressBar,
) -> Result<Vec<PhaseResult>> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(DRIVER).args(plan.args()).env("NIXL_PLUGIN_DIR", plugin_dir).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let total = plan.sizes.len();
    let mut done = 0;
    bar.set_message(format!("{} (1 of {total})", format_size(plan.sizes[0])));
    let out = run_bounded(&mut cmd, plan.deadline(), |line| {
        if line.starts_with('{') {
            done += 1;
            if let Some(next) = plan.sizes.get(done) {
                bar.set_message(format!("{} ({} of {total})", format_size(*next), done + 1));
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("running the NIXL driver with {}: {e}", Path::new(python).display()))?;
    let shown = Path::new(python).display();
    match out.code {
        Some(3) => bail!("{NEEDS_PYTHON} ({shown}: {})", last_line(&out.stderr).unwrap_or("no nixl-cu12")),
        Some(4) => {
            echo_tail(&out.stderr);
            bail!(
                "NIXL could not load the MEMKV backend from {} ({}); {BUILD_PLUGIN}",
                plugin_dir.join(PLUGIN_FILE).display(),
                last_line(&out.stderr).unwrap_or("no detail")
            )
        }
        Some(0) | Some(1) => match parse_rows(&out.stdout, plan) {
            Ok(rows) if out.code == Some(0) || rows.iter().any(|r| r.errors > 0) => Ok(rows),
            Ok(_) => {
                echo_tail(&out.stderr);
                bail!(
                    "the NIXL driver exited 1 without reporting a failed block: {}",
                    last_line(&out.stderr).unwrap_or("?")
                )
            }
            Err(e) => {
                echo_tail(&out.stderr);
                Err(e)
            }
        },
        None if out.timed_out => {
            echo_tail(&out.stderr);
            bail!(
                "the NIXL driver did not finish within {:?} and was killed (a node that stopped answering? see \
                 its output above)",
                plan.deadline()
            )
        }
        code => {
            echo_tail(&out.stderr);
            let code = code.map_or("a signal".to_string(), |c| c.to_string());
            bail!("the NIXL driver ({shown}) exited {code}: {}", last_line(&out.stderr).unwrap_or("no output"))
        }
    }
}

/// The last non-empty line of `text`, trimmed.
fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The end of the driver's stderr, for a failed run (NIXL's and the plugin's own log lines).
fn echo_tail(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    for l in &lines[lines.len().saturating_sub(20)..] {
        eprintln!("  nixl driver: {l}");
    }
}

/// What a bounded child left behind.
struct Finished {
    /// `None` when killed by a signal (or by the deadline: `timed_out`).
    code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end or `timeout` (then kills it), collecting stdout and stderr; `on_line`
/// sees each stdout line as it comes.
fn run_bounded(cmd: &mut Command, timeout: Duration, mut on_line: impl FnMut(&str)) -> std::io::Result<Finished> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (Some(out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::io::Error::other("no pipe to the child"));
    };
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out_reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut stdout = String::new();
    let mut timed_out = false;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            on_line(&line);
            stdout.push_str(&line);
            stdout.push('\n');
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out_reader.join();
    for line in rx.try_iter() {
        on_line(&line);
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Finished { code: if timed_out { None } else { status.code() }, timed_out, stdout, stderr })
}

/// The spinner shown while the driver runs (hidden with `--no-progress`, `--json`, or when
/// stderr is not a terminal).
pub(crate) fn spinner(hidden: bool, version: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    b.set_prefix(format!("NIXL {version} via libplugin_MEMKV"));
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(op: &'static str, sizes: &[u64]) -> Plan {
        Plan {
            sizes: sizes.to_vec(),
            op,
            duration: 0.5,
            max_blocks: 1000,
            verify: true,
            batch: 16,
            handles: 2,
            connections: 4,
        }
    }

    fn line(size: u64, phases: &[(&str, u64, u64)]) -> String {
        let phases: Vec<serde_json::Value> = phases
            .iter()
            .map(|(op, blocks, errors)| {
                serde_json::json!({"op": op, "blocks": blocks, "seconds": 0.5, "gib_per_s": 0.0, "requests": blocks / 16,
                    "p50_us": 100.0, "p99_us": 200.0, "p999_us": 300.0, "errors": errors,
                    "first_error": if *errors > 0 { serde_json::json!("READ request failed") } else { serde_json::Value::Null }})
            })
            .collect();
        serde_json::json!({"block_bytes": size, "batch": 16, "handles": 2, "obj_register_us": 1.0, "phases": phases})
            .to_string()
    }

    #[test]
    fn inflight_maps_to_requests_of_at_most_16_blocks() {
        assert_eq!(shape(32), (16, 2));
        assert_eq!(shape(64), (16, 4));
        assert_eq!(shape(40), (16, 2), "rounded down to whole requests");
        assert_eq!(shape(4), (4, 1), "fewer than 16: one request of that many blocks");
        assert_eq!(shape(1), (1, 1));
        assert_eq!(shape(0), (1, 1));
    }

    #[test]
    fn driver_lines_become_rows_with_blocks_as_ops_and_nixl_logging_skipped() {
        let p = plan("both", &[65536, 2 << 20]);
        let stdout = format!(
            "2026-11-25 NIXL INFO _api.py:281 Initialized NIXL agent\n{}\n{}\n",
            line(65536, &[("put", 3200, 0), ("get", 1600, 0)]),
            line(2 << 20, &[("put", 320, 0), ("get", 160, 16)])
        );
        let rows = parse_rows(&stdout, &p).unwrap();
        let summary: Vec<(&str, u64, u64, u64)> = rows.iter().map(|r| (r.op, r.size_bytes, r.ops, r.errors)).collect();
        assert_eq!(
            summary,
            [("put", 65536, 3200, 0), ("get", 65536, 1600, 0), ("put", 2 << 20, 320, 0), ("get", 2 << 20, 160, 16)]
        );
        let r = &rows[2];
        assert_eq!((r.inflight, r.connections, r.misses), (32, 4, 0));
        assert!((r.gib_per_s - 320.0 * 2.0 / 1024.0 / 0.5).abs() < 1e-9, "{r:?}");
        assert!((r.ops_per_s - 640.0).abs() < 1e-9 && r.p50_us == 100.0 && r.p999_us == 300.0, "{r:?}");
    }

    #[test]
    fn missing_sizes_or_phases_are_refused_not_filled_in() {
        let p = plan("both", &[65536, 2 << 20]);
        let one = line(65536, &[("put", 1, 0), ("get", 1, 0)]);
        let e = parse_rows(&one, &p).unwrap_err().to_string();
        assert!(e.contains("1 of 2 sizes"), "{e}");
        let p = plan("get", &[65536]);
        let e = parse_rows(&one, &p).unwrap_err().to_string();
        assert!(e.contains("phases"), "{e}");
        assert!(parse_rows(&line(65536, &[("get", 1, 0)]), &p).is_ok());
        assert!(parse_rows("{not json", &p).is_err());
    }

    #[test]
    fn the_plan_becomes_the_drivers_flags() {
        let mut p = plan("get", &[4096, 65536]);
        p.verify = false;
        let a = p.args().join(" ");
        assert_eq!(
            a,
            "--json --size 4096,65536 --batch 16 --handles 2 --duration 0.5 --op get --max-blocks 1000 --no-verify"
        );
        // The embedded driver takes every flag passed to it.
        for flag in p.args().iter().filter(|a| a.starts_with("--")) {
            assert!(DRIVER.contains(&format!("\"{flag}\"")), "{flag} unknown to nixl_kv.py");
        }
    }

    #[test]
    fn pools_over_budget_are_refused_with_the_flags_to_lower() {
        let mut p = plan("both", &[16 << 20]);
        p.handles = 4; // 64 blocks x 16 MiB x 2 = 2 GiB
        assert!(p.check_memory().is_ok());
        p.sizes = vec![64 << 20];
        let e = p.check_memory().unwrap_err().to_string();
        assert!(e.contains("--inflight") && e.contains("8 GiB"), "{e}");
    }

    #[test]
    fn flags_reach_the_plugin_as_its_memkv_variables() {
        let explicit: BTreeMap<String, String> =
            [("servers", "10.0.0.1:9000"), ("transport", "tcp"), ("rdma_gid_index", "3"), ("payload_mac", "true")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let env = cluster_env(&explicit, 8);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MEMKV_SERVERS"), Some("10.0.0.1:9000"));
        assert_eq!(get("MEMKV_TRANSPORT"), Some("tcp"));
        assert_eq!(get("MEMKV_RDMA_GID_INDEX"), Some("3"));
        assert_eq!(get("MEMKV_PAYLOAD_MAC"), Some("true"));
        assert_eq!(get("MEMKV_NUM_CONNECTIONS"), Some("8"));
    }

    #[test]
    fn plugin_dir_prefers_the_flag_then_the_variable_then_the_memkv_directory() {
        let with = tempfile::tempdir().unwrap();
        std::fs::write(with.path().join(PLUGIN_FILE), b"").unwrap();
        let without = tempfile::tempdir().unwrap();
        let exe = Some(with.path().join("memkv"));
        assert_eq!(plugin_dir(None, None, exe.clone()).unwrap(), with.path());
        let e = plugin_dir(None, Some(without.path().into()), exe.clone()).unwrap_err().to_string();
        assert!(e.contains("NIXL_PLUGIN_DIR") && e.contains("cargo build --release -p memkv-nixl"), "{e}");
        let e = plugin_dir(Some(without.path()), Some(with.path().into()), exe).unwrap_err().to_string();
        assert!(e.contains("--nixl-plugin-dir"), "{e}");
        let e = plugin_dir(None, None, Some(without.path().join("memkv"))).unwrap_err().to_string();
        assert!(e.contains("NIXL_PLUGIN_DIR is not set") && e.contains("cargo build --release -p memkv-nixl"), "{e}");
    }

    #[test]
    fn python_comes_from_the_flag_then_memkv_python_then_python3() {
        assert_eq!(python(Some(Path::new("/opt/py")), Some("/env/py".into())), "/opt/py");
        assert_eq!(python(None, Some("/env/py".into())), "/env/py");
        assert_eq!(python(None, Some("".into())), "python3");
        assert_eq!(python(None, None), "python3");
    }

    #[test]
    fn a_python_that_cannot_run_the_check_gets_the_venv_fix() {
        for py in ["/bin/false", "/nonexistent/python"] {
            let e = check_python(&py.into()).unwrap_err().to_string();
            assert!(e.contains("nixl-cu12") && e.contains("scripts/nixl-venv.sh") && e.contains(py), "{e}");
        }
    }
}
