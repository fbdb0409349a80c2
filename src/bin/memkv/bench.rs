//! `memkv bench`: PUT/GET/mixed load over a size sweep, with verified reads, a progress bar, and
//! a table (or JSON, CSV) of GiB/s, ops/s and latency percentiles; `--plot` also draws GiB/s by
//! block size as an SVG (plot.rs).
//!
//! Every phase is bounded by `--count` operations and `--duration` seconds, whichever comes
//! first. Values are precomputed before timing (one buffer per key, each stamped with its key),
//! so the client measures transfers, not buffer filling; every GET is compared byte for byte
//! (every Nth with `--verify-every N`; the client library checks every GET's CRC32C anyway).
//!
//! `--via raw` (the default) drives the client library from this process; `--via nixl` drives
//! the same phases through the real NIXL agent and libplugin_MEMKV.so (bench_nixl.rs). Both
//! produce the same [`PhaseResult`] rows, so every output format and the plot work for either.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use memkv::Client;
use memkv::client::{GetItem, Loans, PutItem};
use memkv::config::{format_size, parse_size};

use crate::ConnArgs;
use crate::bench_nixl;
use crate::plot;

/// Sizes of `--sweep`.
const SWEEP: &[&str] = &["4KiB", "64KiB", "1MiB", "2MiB", "4MiB", "16MiB"];
/// Memory the precomputed values of one size may take.
const VALUE_BUDGET: u64 = 256 << 20;
/// `--prefix` when not given.
const DEFAULT_PREFIX: &str = "memkv-bench";

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

/// What drives the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Via {
    /// The memkv client library, in this process
    Raw,
    /// The real NIXL agent with libplugin_MEMKV.so (KVBM-shaped WRITE/READ requests of up to 16
    /// blocks), run by the Python driver benches/nixl_kv.py embedded in memkv
    Nixl,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// What to measure
    #[arg(long, value_enum, default_value_t = BenchOp::Both)]
    op: BenchOp,
    /// What drives the cluster. With nixl, PUT is a NIXL WRITE (offload) and GET a NIXL READ
    /// (onboard); --inflight N becomes requests of min(N, 16) blocks, N/16 of them (at least 1)
    /// in flight; ops count blocks and the latency percentiles are per NIXL request; every block
    /// is compared once after the READ phase. Needs a Python with nixl-cu12 (--python) and
    /// libplugin_MEMKV.so (--nixl-plugin-dir); not with --op mixed, --keys, --no-fill, --prefix
    /// or --gpu
    #[arg(long, value_enum, default_value_t = Via::Raw)]
    via: Via,
    /// With --via nixl: the Python that has the nixl-cu12 wheel (scripts/nixl-venv.sh makes one)
    /// [env: MEMKV_PYTHON] [default: python3]
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// With --via nixl: the directory holding libplugin_MEMKV.so (`cargo build --release -p
    /// memkv-nixl` puts it in target/release) [env: NIXL_PLUGIN_DIR] [default: the directory of
    /// this memkv, if it holds the plugin]
    #[arg(long, value_name = "DIR")]
    nixl_plugin_dir: Option<PathBuf>,
    /// After the run, write an SVG line chart of GiB/s by block size (log2 axis), one line per
    /// op, to FILE (written even when some operations failed; not with --gpu)
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Value sizes, comma-separated (e.g. 4KiB,2MiB)
    #[arg(long, default_value = "2MiB", value_delimiter = ',')]
    size: Vec<String>,
    /// Run the standard sweep: 4KiB, 64KiB, 1MiB, 2MiB, 4MiB, 16MiB
    #[arg(long)]
    sweep: bool,
    /// Connections per node (MEMKV_NUM_CONNECTIONS for this run)
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight at once (concurrent workers); with --via nixl, blocks in flight (see
    /// --via)
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Blocks per request: with N > 1 each request is a PUT_BATCH / GET_BATCH of N blocks (as
    /// KVBM's batches through NIXL, or Redis pipelining), and --inflight counts blocks, so
    /// inflight / N requests are in flight. Latencies are per request
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024), value_name = "N")]
    batch: u64,
    /// Most operations per phase (with --via nixl: blocks, rounded up to whole requests)
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Most seconds per phase
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Distinct keys per size [default: as many as fit 256 MiB of values, 8..=4096, and at least
    /// --inflight, so that no two blocks in flight are the same value]
    #[arg(long)]
    keys: Option<u64>,
    /// Key prefix (inside the namespace)
    #[arg(long, default_value = DEFAULT_PREFIX)]
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
    /// over the bytes, which shows at memory speeds (the shared-memory transport). With --via
    /// nixl, any N but 0 compares every block once, after the READ phase
    #[arg(long, default_value_t = 1, value_name = "N")]
    verify_every: u64,
    /// GETs read into a fixed pool of this process's memory, one block-sized region per block in
    /// flight (as KVBM's host pool is through NIXL), with `get_batch_into`, instead of into a new
    /// buffer each
    #[arg(long)]
    pool: bool,
    // `--gpu`, `--gpu-index`, `--gpu-bytes`: see bench_gpu.rs.
    #[command(flatten)]
    gpu: crate::bench_gpu::GpuArgs,
}

/// One measured phase (one row of the table, JSON array or CSV).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PhaseResult {
    pub(crate) op: &'static str,
    pub(crate) size_bytes: u64,
    /// Operations (with --via nixl: blocks).
    pub(crate) ops: u64,
    pub(crate) seconds: f64,
    pub(crate) gib_per_s: f64,
    pub(crate) ops_per_s: f64,
    /// Latency percentiles of one operation (with --via nixl: of one NIXL request).
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) misses: u64,
    pub(crate) errors: u64,
    pub(crate) connections: usize,
    /// Blocks in flight.
    pub(crate) inflight: usize,
    /// Blocks per request.
    pub(crate) batch: usize,
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

/// The flags `--via nixl` cannot honour, as the error that says what to do instead.
fn refuse_for_nixl(args: &BenchArgs) -> Result<()> {
    if args.gpu.enabled {
        bail!("--via nixl does not take --gpu: the NIXL driver moves host (DRAM) blocks; run --gpu with --via raw");
    }
    if args.pool {
        bail!("--via nixl always reads into the pool it registers with NIXL; drop --pool");
    }
    if args.op == BenchOp::Mixed {
        bail!("--via nixl cannot run --op mixed: a NIXL request is all WRITE or all READ; use --op both, or --via raw");
    }
    if args.keys.is_some() {
        bail!(
            "--via nixl does not take --keys: it moves --inflight blocks, each under a fresh 64-bit hash as KVBM's \
             are; drop --keys (or use --via raw)"
        );
    }
    if args.no_fill {
        bail!(
            "--via nixl does not take --no-fill: each run writes blocks under fresh random hashes, so nothing an \
             earlier run stored can be read back; drop --no-fill (or use --via raw)"
        );
    }
    if args.batch != 1 {
        bail!(
            "--via nixl does not take --batch: its requests carry min(--inflight, 16) blocks, as KVBM's do; \
             set --inflight (or use --via raw)"
        );
    }
    if args.prefix != DEFAULT_PREFIX {
        bail!(
            "--via nixl does not use --prefix: NIXL blocks are keyed by 64-bit hashes; set --namespace (or \
             MEMKV_NAMESPACE) to keep them apart"
        );
    }
    Ok(())
}

pub(crate) async fn run(conn: &ConnArgs, args: BenchArgs) -> Result<ExitCode> {
    match args.via {
        Via::Nixl => refuse_for_nixl(&args)?,
        Via::Raw => {
            if args.python.is_some() || args.nixl_plugin_dir.is_some() {
                bail!("--python and --nixl-plugin-dir are for --via nixl; add --via nixl or drop them");
            }
        }
    }
    if args.gpu.enabled {
        if args.plot.is_some() {
            bail!("--plot does not draw --gpu runs (their rows are per copy path, not per block size); drop --plot");
        }
        if args.pool {
            bail!("--pool is for GETs into host memory; --gpu reads into GPU memory, so drop --pool");
        }
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
    let sizes: Vec<u64> = if args.sweep { SWEEP.iter().map(|s| s.to_string()).collect() } else { args.size.clone() }
        .iter()
        .map(|s| parse_size(s).map_err(|e| anyhow::anyhow!("--size {s:?}: {e}")))
        .collect::<Result<_>>()?;
    if sizes.contains(&0) {
        bail!("--size must be at least 1 byte");
    }
    if let Some(p) = &args.plot {
        check_plot_path(p)?;
    }
    let (results, title) = match args.via {
        Via::Raw => run_raw(conn, &args, &sizes).await?,
        Via::Nixl => run_nixl(conn, &args, sizes).await?,
    };
    let failed = results.iter().any(|r| r.errors > 0 || (r.op == "get" && r.misses > 0));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if args.csv {
        print_csv(&results);
    } else {
        print_table(&results);
    }
    if let Some(path) = &args.plot {
        write_plot(path, &title, &results)?;
        if !args.json {
            eprintln!("memkv bench: wrote {}", path.display());
        }
    }
    if failed {
        eprintln!("memkv bench: some operations failed or missed (see the errors/misses columns)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses, before measuring, a `--plot` file that could not be written afterwards.
fn check_plot_path(path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "--plot {}: directory {} does not exist; create it or pick another file",
            path.display(),
            parent.display()
        );
    }
    if path.is_dir() {
        bail!("--plot {}: is a directory; give a file name such as bench.svg", path.display());
    }
    Ok(())
}

/// One line per op, in the order the ops first appear.
fn write_plot(path: &Path, title: &str, results: &[PhaseResult]) -> Result<()> {
    let mut series: Vec<plot::Series> = Vec::new();
    for r in results {
        let i = match series.iter().position(|s| s.name == r.op) {
            Some(i) => i,
            None => {
                series.push(plot::Series { name: r.op.to_string(), points: Vec::new() });
                series.len() - 1
            }
        };
        series[i].points.push((r.size_bytes, r.gib_per_s));
    }
    std::fs::write(path, plot::svg(title, &series))
        .map_err(|e| anyhow::anyhow!("--plot {}: writing: {e}", path.display()))
}

/// The phases through the client library of this process; returns the rows and the plot title.
async fn run_raw(conn: &ConnArgs, args: &BenchArgs, sizes: &[u64]) -> Result<(Vec<PhaseResult>, String)> {
    let cfg = conn.client_config(&[("num_connections", args.connections.to_string())])?;
    let title = format!(
        "memkv bench --via raw: transport {}, {} conns/node, {} in flight",
        cfg.transport, args.connections, args.inflight
    );
    let client = Client::new(cfg)?;
    reach(&client).await?;
    let mut results = Vec::new();
    for &size in sizes {
        let keys = args.keys.unwrap_or_else(|| default_keys(size, args.inflight)).max(1);
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
        // Keys the reads may ask for: all after a fill; after the PUT phase of `both`, those it
        // wrote (its operations take the keys in order, so a PUT phase ended by --duration
        // before the last key leaves the rest unwritten; reading them would count as misses).
        let mut readable = values.keys.len();
        for &kind in phases {
            let r = phase(&client, &values, kind, readable, args).await;
            if kind == Kind::Put {
                readable = (r.ops as usize).clamp(1, readable);
            }
            results.push(r);
        }
    }
    Ok((results, title))
}

/// Every node answers before anything is measured.
async fn reach(client: &Client) -> Result<()> {
    for s in client.servers() {
        if let Err(e) = client.node_info(&s).await {
            bail!("cannot reach {s} before benchmarking: {e}");
        }
    }
    Ok(())
}

/// The phases through the NIXL agent and the plugin (see bench_nixl.rs); returns the rows and
/// the plot title.
async fn run_nixl(conn: &ConnArgs, args: &BenchArgs, sizes: Vec<u64>) -> Result<(Vec<PhaseResult>, String)> {
    let (batch, handles) = bench_nixl::shape(args.inflight);
    let plan = bench_nixl::Plan {
        sizes,
        op: match args.op {
            BenchOp::Put => "put",
            BenchOp::Get => "get",
            _ => "both",
        },
        duration: args.duration,
        max_blocks: args.count,
        verify: args.verify_every != 0,
        batch,
        handles,
        connections: args.connections,
    };
    plan.check_memory()?;
    let plugin_dir = bench_nixl::plugin_dir(
        args.nixl_plugin_dir.as_deref(),
        std::env::var_os("NIXL_PLUGIN_DIR"),
        std::env::current_exe().ok(),
    )?;
    let python = bench_nixl::python(args.python.as_deref(), std::env::var_os("MEMKV_PYTHON"));
    let version = tokio::task::spawn_blocking({
        let python = python.clone();
        move || bench_nixl::check_python(&python)
    })
    .await??;
    // The plugin reads the same settings: check them, and the nodes, here where the errors are
    // clear.
    let cfg = conn.client_config(&[("num_connections", args.connections.to_string())])?;
    let title = format!(
        "memkv bench --via nixl (NIXL {version}): transport {}, {handles} × {batch} blocks in flight",
        cfg.transport
    );
    reach(&Client::new(cfg)?).await?;
    let env = bench_nixl::cluster_env(&conn.explicit(), args.connections);
    let bar = bench_nixl::spinner(args.no_progress || args.json, &version);
    let rows = tokio::task::spawn_blocking({
        let bar = bar.clone();
        move || bench_nixl::run(&python, &plugin_dir, &env, &plan, &bar)
    })
    .await?;
    bar.finish_and_clear();
    let rows = rows?;
    if !args.json && !args.csv {
        eprintln!(
            "memkv bench --via nixl: ops are blocks; latencies are per NIXL request of {batch} blocks ({handles} in \
             flight); NIXL {version}"
        );
    }
    Ok((rows, title))
}

/// The phases as CSV, with the JSON output's field names as the header.
fn print_csv(results: &[PhaseResult]) {
    println!(
        "op,size_bytes,ops,seconds,gib_per_s,ops_per_s,p50_us,p99_us,p999_us,misses,errors,connections,inflight,batch"
    );
    for r in results {
        println!(
            "{},{},{},{:.6},{:.6},{:.1},{:.1},{:.1},{:.1},{},{},{},{},{}",
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
            r.inflight,
            r.batch
        );
    }
}

async fn fill(client: &Client, v: &Values) -> Result<()> {
    for (k, d) in v.keys.iter().zip(&v.data) {
        client.put(k, d.clone()).await?;
    }
    Ok(())
}

/// Distinct keys of `size` bytes when --keys is not given: as many as fit [`VALUE_BUDGET`]
/// (8..=4096), and at least one per block in flight. With fewer keys than blocks in flight (16
/// keys of 16 MiB, 32 blocks in flight) two requests moved the same value at once, and the second
/// found its bytes in the CPU cache: the raw client's 16 MiB GET over shared memory read 15-18
/// GiB/s that way against 11-12 with a key per block, which no workload of distinct KV blocks
/// (the NIXL driver's pool, say) gets.
fn default_keys(size: u64, inflight: usize) -> u64 {
    (VALUE_BUDGET / size).clamp(8, 4096).max(inflight as u64)
}

/// The `n` entries of `all` from `from` on, wrapping around to its start: borrowed where they
/// do not wrap.
fn window<T: Clone>(all: &[T], from: usize, n: usize) -> Cow<'_, [T]> {
    match all.get(from..from + n) {
        Some(w) => Cow::Borrowed(w),
        None => Cow::Owned(all.iter().cycle().skip(from).take(n).cloned().collect()),
    }
}

/// One phase over the first `keys` keys of `values`.
async fn phase(client: &Client, values: &Arc<Values>, kind: Kind, keys: usize, args: &BenchArgs) -> PhaseResult {
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
    let batch = args.batch;
    let requests = (args.inflight as u64 / batch).max(1);
    // With --pool, each request's own blocks of the pool, written once before timing so that
    // their pages exist (a KVBM pool is registered, and so touched, before its first transfer).
    let block = usize::try_from(values.size).expect("a value that was built fits in memory");
    let pool_bytes = if args.pool && kind != Kind::Put { batch as usize * block } else { 0 };
    let mut pools: Vec<Vec<u8>> = (0..requests).map(|_| vec![0x5a; pool_bytes]).collect();
    // Every request's entries, made once (as redis-benchmark makes its commands once): a request
    // of consecutive keys is a window of these, so the timed loop allocates no keys.
    let (puts, gets): (Arc<[PutItem]>, Arc<[GetItem]>) = {
        let length = if pool_bytes > 0 { values.size } else { 0 };
        let keys = &values.keys[..keys];
        (
            keys.iter().zip(&values.data).map(|(k, d)| PutItem::whole(k.clone(), d.clone())).collect(),
            keys.iter().map(|k| GetItem { key: k.clone(), offset: 0, length }).collect(),
        )
    };
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let (client, values, next, bytes_done, bar) =
            (client.clone(), Arc::clone(values), Arc::clone(&next), Arc::clone(&bytes_done), bar.clone());
        let (puts, gets) = (Arc::clone(&puts), Arc::clone(&gets));
        let (count, verify_every) = (args.count, args.verify_every);
        let mut pool = pools.pop().expect("one pool per request");
        workers.spawn(async move {
            let mut lat = Vec::new();
            let (mut blocks, mut misses, mut errors) = (0u64, 0u64, 0u64);
            let loans = Loans::new();
            let check = |i: u64, k: usize, got: Option<&[u8]>, misses: &mut u64, errors: &mut u64| match got {
                Some(v) if verify_every == 0 || !i.is_multiple_of(verify_every) || v == &values.data[k][..] => {}
                Some(_) => {
                    *errors += 1;
                    tracing::error!(key = %String::from_utf8_lossy(&values.keys[k]), "GET returned bytes that differ from what was written");
                }
                None => *misses += 1,
            };
            loop {
                let i = next.fetch_add(batch, Ordering::Relaxed);
                if i >= count || start.elapsed() >= deadline {
                    break;
                }
                let n = batch.min(count - i);
                let key_of = |j: u64| ((i + j) % keys as u64) as usize;
                let write = match kind {
                    Kind::Put => true,
                    Kind::Get => false,
                    Kind::Mixed => (i / batch).is_multiple_of(2),
                };
                let t = Instant::now();
                let failed = if n == 1 && write {
                    let k = key_of(0);
                    client.put(&values.keys[k], values.data[k].clone()).await.err()
                } else if !write && !pool.is_empty() {
                    let items = window(&gets, key_of(0), n as usize);
                    // SAFETY: each target is its own block of this request's pool, which nothing
                    // reads or writes until the loans have ended (waited for below).
                    let targets =
                        (0..n as usize).map(|j| unsafe { loans.target(pool.as_mut_ptr().add(j * block), block) }).collect();
                    let got = client.get_batch_into(&items, targets).await;
                    while loans.outstanding() > 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    match got {
                        Ok(found) => {
                            for (j, f) in found.into_iter().enumerate() {
                                let bytes = &pool[j * block..(j + 1) * block];
                                check(i + j as u64, key_of(j as u64), f.then_some(bytes), &mut misses, &mut errors);
                            }
                            None
                        }
                        Err(e) => Some(e),
                    }
                } else if n == 1 {
                    let k = key_of(0);
                    match client.get(&values.keys[k]).await {
                        Ok(v) => {
                            check(i, k, v.as_deref(), &mut misses, &mut errors);
                            None
                        }
                        Err(e) => Some(e),
                    }
                } else if write {
                    client.put_batch(&window(&puts, key_of(0), n as usize)).await.err()
                } else {
                    let items = window(&gets, key_of(0), n as usize);
                    match client.get_batch(&items).await {
                        Ok(got) => {
                            for (j, v) in got.iter().enumerate() {
                                check(i + j as u64, key_of(j as u64), v.as_deref(), &mut misses, &mut errors);
                            }
                            None
                        }
                        Err(e) => Some(e),
                    }
                };
                if let Some(e) = failed {
                    errors += n;
                    tracing::warn!(error = %e, "{} failed", if write { "put" } else { "get" });
                }
                lat.push(t.elapsed().as_nanos() as u64);
                blocks += n;
                bytes_done.fetch_add(values.size * n, Ordering::Relaxed);
                bar.inc(n);
                if i.is_multiple_of(256 * batch) {
                    let secs = start.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!("{:.2} GiB/s", bytes_done.load(Ordering::Relaxed) as f64 / secs / (1u64 << 30) as f64));
                }
            }
            (lat, blocks, misses, errors)
        });
    }
    let mut lat = Vec::new();
    let (mut ops, mut misses, mut errors) = (0, 0, 0);
    while let Some(r) = workers.join_next().await {
        match r {
            Ok((l, b, m, e)) => {
                lat.extend(l);
                ops += b;
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
        inflight: (requests * batch) as usize,
        batch: batch as usize,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_borrows_consecutive_entries_and_wraps_past_the_end() {
        let all = [0, 1, 2, 3, 4];
        assert!(matches!(window(&all, 1, 3), Cow::Borrowed([1, 2, 3])));
        assert!(matches!(window(&all, 1, 4), Cow::Borrowed([1, 2, 3, 4])));
        assert_eq!(*window(&all, 3, 4), [3, 4, 0, 1]);
        assert_eq!(*window(&all, 4, 12), [4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0], "more entries than there are");
    }

    #[test]
    fn default_keys_fill_the_value_budget_and_cover_every_block_in_flight() {
        assert_eq!(default_keys(4096, 32), 4096, "capped at 4096");
        assert_eq!(default_keys(1 << 20, 32), 256, "256 MiB of values");
        assert_eq!(default_keys(64 << 20, 1), 8, "at least 8");
        assert_eq!(default_keys(16 << 20, 32), 32, "one per block in flight, past the budget");
        assert_eq!(default_keys(16 << 20, 8), 16);
    }
}
