//! `memkv bench`: PUT/GET/mixed load over a size sweep, with verified reads, a progress bar, and
//! a table (or JSON) of GiB/s, ops/s and latency percentiles.
//!
//! Every phase is bounded by `--count` operations and `--duration` seconds, whichever comes
//! first. Values are precomputed before timing (one buffer per key, each stamped with its key),
//! so the client measures transfers, not buffer filling; every GET is compared byte for byte
//! (every Nth with `--verify-every N`; the client library checks every GET's CRC32C anyway).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use memkv::Client;
use memkv::config::{format_size, parse_size};

use crate::ConnArgs;

/// Sizes of `--sweep`.
const SWEEP: &[&str] = &["4KiB", "64KiB", "1MiB", "2MiB", "4MiB", "16MiB"];
/// Memory the precomputed values of one size may take.
const VALUE_BUDGET: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchOp {
    /// Writes only
    Put,
    /// Reads only (after a fill)
    Get,
    /// Writes, then reads
    Both,
    /// Half reads, half writes, interleaved (after a fill)
    Mixed,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// What to measure
    #[arg(long, value_enum, default_value_t = BenchOp::Both)]
    op: BenchOp,
    /// Value sizes, comma-separated (e.g. 4KiB,2MiB)
    #[arg(long, default_value = "2MiB", value_delimiter = ',')]
    size: Vec<String>,
    /// Run the standard sweep: 4KiB, 64KiB, 1MiB, 2MiB, 4MiB, 16MiB
    #[arg(long)]
    sweep: bool,
    /// Connections per node (MEMKV_NUM_CONNECTIONS for this run)
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight at once (concurrent workers)
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Most operations per phase
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Most seconds per phase
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Distinct keys per size [default: as many as fit 256 MiB of values, 8..=4096]
    #[arg(long)]
    keys: Option<u64>,
    /// Key prefix (inside the namespace)
    #[arg(long, default_value = "memkv-bench")]
    prefix: String,
    /// Skip the fill before `get`/`mixed`: read what an earlier run with the same --prefix,
    /// --size and --keys stored (e.g. after a node restart, to measure reads from its drives)
    #[arg(long)]
    no_fill: bool,
    /// Print JSON instead of a table
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV (a header line, then one line per phase) instead of a table
    #[arg(long)]
    csv: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Compare every Nth GET byte for byte with what was written (1: every GET; 0: none). The
    /// client library checks every GET's CRC32C whatever this says; the comparison costs a pass
    /// over the bytes, which shows at memory speeds (the shared-memory transport)
    #[arg(long, default_value_t = 1, value_name = "N")]
    verify_every: u64,
    // `--gpu`, `--gpu-index`, `--gpu-bytes`: see bench_gpu.rs.
    #[command(flatten)]
    gpu: crate::bench_gpu::GpuArgs,
}

/// One measured phase.
#[derive(Debug, Clone, serde::Serialize)]
struct PhaseResult {
    op: &'static str,
    size_bytes: u64,
    ops: u64,
    seconds: f64,
    gib_per_s: f64,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    misses: u64,
    errors: u64,
    connections: usize,
    inflight: usize,
}

struct Values {
    size: u64,
    keys: Vec<Vec<u8>>,
    data: Vec<Bytes>,
}

impl Values {
    fn new(prefix: &str, size: u64, keys: u64) -> Self {
        let mut seed = xxhash_rust::xxh3::xxh3_64(&size.to_le_bytes());
        let base: Vec<u8> = (0..size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut data = Vec::with_capacity(keys as usize);
        let mut names = Vec::with_capacity(keys as usize);
        for i in 0..keys {
            let mut v = base.clone();
            // Stamp the key index over the first bytes so that a value read back under the wrong
            // key cannot compare equal.
            let stamp = i.to_le_bytes();
            for (d, s) in v.iter_mut().zip(stamp.iter().chain(size.to_le_bytes().iter())) {
                *d = *s;
            }
            data.push(Bytes::from(v));
            names.push(format!("{prefix}/{size}/{i}").into_bytes());
        }
        Self { size, keys: names, data }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Put,
    Get,
    Mixed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
            Self::Mixed => "mixed",
        }
    }
}

pub(crate) async fn run(conn: &ConnArgs, args: BenchArgs) -> Result<ExitCode> {
    if args.gpu.enabled {
        let common = crate::bench_gpu::Common {
            size: &args.size,
            connections: args.connections,
            count: args.count,
            duration: args.duration,
            json: args.json,
            csv: args.csv,
            no_progress: args.no_progress,
        };
        return crate::bench_gpu::run(conn, &args.gpu, &common).await;
    }
    if args.inflight == 0 || args.inflight > 4096 {
        bail!("--inflight must be in 1..=4096; got {}", args.inflight);
    }
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        bail!("--duration must be in (0, 3600] seconds; got {}", args.duration);
    }
    let cfg = conn.client_config(&[("num_connections", args.connections.to_string())])?;
    let client = Client::new(cfg)?;
    for s in client.servers() {
        if let Err(e) = client.node_info(&s).await {
            bail!("cannot reach {s} before benchmarking: {e}");
        }
    }
    let sizes: Vec<u64> = if args.sweep { SWEEP.iter().map(|s| s.to_string()).collect() } else { args.size.clone() }
        .iter()
        .map(|s| parse_size(s).map_err(|e| anyhow::anyhow!("--size {s:?}: {e}")))
        .collect::<Result<_>>()?;
    let mut results = Vec::new();
    let mut failed = false;
    for size in sizes {
        if size == 0 {
            bail!("--size must be at least 1 byte");
        }
        let keys = args.keys.unwrap_or((VALUE_BUDGET / size).clamp(8, 4096)).max(1);
        let values = Arc::new(Values::new(&args.prefix, size, keys));
        let phases: &[Kind] = match args.op {
            BenchOp::Put => &[Kind::Put],
            BenchOp::Get => &[Kind::Get],
            BenchOp::Both => &[Kind::Put, Kind::Get],
            BenchOp::Mixed => &[Kind::Mixed],
        };
        if args.op != BenchOp::Put && args.op != BenchOp::Both && !args.no_fill {
            fill(&client, &values).await?;
        }
        for &kind in phases {
            let r = phase(&client, &values, kind, &args).await;
            failed |= r.errors > 0 || (kind == Kind::Get && r.misses > 0);
            results.push(r);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if args.csv {
        print_csv(&results);
    } else {
        print_table(&results);
    }
    if failed {
        eprintln!("memkv bench: some operations failed or missed (see the errors/misses columns)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The phases as CSV, with the JSON output's field names as the header.
fn print_csv(results: &[PhaseResult]) {
    println!("op,size_bytes,ops,seconds,gib_per_s,ops_per_s,p50_us,p99_us,p999_us,misses,errors,connections,inflight");
    for r in results {
        println!(
            "{},{},{},{:.6},{:.6},{:.1},{:.1},{:.1},{:.1},{},{},{},{}",
            r.op,
            r.size_bytes,
            r.ops,
            r.seconds,
            r.gib_per_s,
            r.ops_per_s,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.misses,
            r.errors,
            r.connections,
            r.inflight
        );
    }
}

async fn fill(client: &Client, v: &Values) -> Result<()> {
    for (k, d) in v.keys.iter().zip(&v.data) {
        client.put(k, d.clone()).await?;
    }
    Ok(())
}

async fn phase(client: &Client, values: &Arc<Values>, kind: Kind, args: &BenchArgs) -> PhaseResult {
    let deadline = Duration::from_secs_f64(args.duration);
    let next = Arc::new(AtomicU64::new(0));
    let bytes_done = Arc::new(AtomicU64::new(0));
    let bar = if args.no_progress || args.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(args.count);
        b.set_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} ops {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(format!("{} {}", kind.name(), format_size(values.size)));
        b
    };
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.inflight {
        let (client, values, next, bytes_done, bar) =
            (client.clone(), Arc::clone(values), Arc::clone(&next), Arc::clone(&bytes_done), bar.clone());
        let (count, verify_every) = (args.count, args.verify_every);
        workers.spawn(async move {
            let mut lat = Vec::new();
            let (mut misses, mut errors) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || start.elapsed() >= deadline {
                    break;
                }
                let k = (i % values.keys.len() as u64) as usize;
                let write = match kind {
                    Kind::Put => true,
                    Kind::Get => false,
                    Kind::Mixed => i % 2 == 0,
                };
                let t = Instant::now();
                if write {
                    match client.put(&values.keys[k], values.data[k].clone()).await {
                        Ok(()) => {}
                        Err(e) => {
                            errors += 1;
                            tracing::warn!(error = %e, "put failed");
                        }
                    }
                } else {
                    match client.get(&values.keys[k]).await {
                        Ok(Some(v)) if verify_every == 0 || i % verify_every != 0 || v == values.data[k] => {}
                        Ok(Some(_)) => {
                            errors += 1;
                            tracing::error!(key = %String::from_utf8_lossy(&values.keys[k]), "GET returned bytes that differ from what was written");
                        }
                        Ok(None) => misses += 1,
                        Err(e) => {
                            errors += 1;
                            tracing::warn!(error = %e, "get failed");
                        }
                    }
                }
                lat.push(t.elapsed().as_nanos() as u64);
                bytes_done.fetch_add(values.size, Ordering::Relaxed);
                bar.inc(1);
                if i % 256 == 0 {
                    let secs = start.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!("{:.2} GiB/s", bytes_done.load(Ordering::Relaxed) as f64 / secs / (1u64 << 30) as f64));
                }
            }
            (lat, misses, errors)
        });
    }
    let mut lat = Vec::new();
    let (mut misses, mut errors) = (0, 0);
    while let Some(r) = workers.join_next().await {
        match r {
            Ok((l, m, e)) => {
                lat.extend(l);
                misses += m;
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() { 0.0 } else { lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0 }
    };
    let ops = lat.len() as u64;
    PhaseResult {
        op: kind.name(),
        size_bytes: values.size,
        ops,
        seconds,
        gib_per_s: (ops * values.size) as f64 / seconds / (1u64 << 30) as f64,
        ops_per_s: ops as f64 / seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        misses,
        errors,
        connections: args.connections,
        inflight: args.inflight,
    }
}

fn print_table(results: &[PhaseResult]) {
    println!(
        "{:<6} {:>9} {:>9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>7} {:>7}",
        "op", "size", "ops", "GiB/s", "ops/s", "p50 us", "p99 us", "p999 us", "misses", "errors"
    );
    for r in results {
        println!(
            "{:<6} {:>9} {:>9} {:>9.3} {:>11.0} {:>10.1} {:>10.1} {:>10.1} {:>7} {:>7}",
            r.op,
            format_size(r.size_bytes),
            r.ops,
            r.gib_per_s,
            r.ops_per_s,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.misses,
            r.errors
        );
    }
}
