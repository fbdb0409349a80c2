//! `memkv bench --gpu`: the GPU-host benchmark of the GPU memory path (issue 5). On one GPU it
//! measures, in order:
//!
//! 1. D2H pageable: `cuMemcpyDtoH` of the device buffer into a `Vec`;
//! 2. H2D pageable: the other way;
//! 3. D2H pinned: into a `cuMemHostAlloc` buffer (the ceiling of any staged read of VRAM);
//! 4. H2D pinned: the other way;
//! 5. staging pipeline D2H: [`staging::stage_out`] of the buffer in `--size` blocks through a pool
//!    of pinned slots sized like the client's (`MEMKV_STAGING_SIZE_MB` / `MEMKV_STAGING_SLOT_MB`),
//!    with a `send` that drops each chunk. Issue 5's target: at least [`TARGET`] of row 3, measured
//!    in the same run; the ratio and a PASS/FAIL line are printed;
//! 6. VRAM → cluster: [`Client::put_staged`] of the blocks as objects `gpubench-<i>`;
//! 7. cluster → VRAM: [`Client::get_staged`] of those objects into a second device buffer,
//!
//! then copies both device buffers back and compares them with the pattern that was written:
//! a mismatch exits 1.
//!
//! Every row runs at least [`MIN_ROUNDS`] rounds, then more until `--count` rounds or
//! `--duration` seconds for the row, whichever comes first; the median round is reported. GiB =
//! 2^30 bytes.
//!
//! Order of checks: the arguments (pure), then the CUDA driver — a host without one exits 2 with
//! the driver's reason before any cluster setting or license is resolved — then the cluster (every
//! node must answer), then device and host memory. It must never change what `memkv bench`
//! without `--gpu` does; the objects it writes are deleted at the end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use memkv::Client;
use memkv::client::{StagedError, StagedPart};
use memkv::config::{format_size, parse_size};
use memkv::mem::MemError;
use memkv::mem::cuda::{self, Cuda, CudaCopy, PinnedHost};
use memkv::mem::staging::{self, BoxError, Chunk, Segment, SlotPool};
use tokio::task::block_in_place;

use crate::ConnArgs;

/// Rounds every row runs, whatever `--count` and `--duration` say (a median needs three).
const MIN_ROUNDS: u64 = 3;
/// Issue 5: the staging pipeline must reach this share of the pinned D2H copy.
const TARGET: f64 = 0.90;
/// Most blocks (objects) per round: keeps the key list and the part descriptors small.
const MAX_BLOCKS: u64 = 1 << 20;
/// Bytes per GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// The flags of `memkv bench --gpu`.
#[derive(Args, Debug, Clone)]
pub(crate) struct GpuArgs {
    /// Measure this host's GPU memory path instead (issue 5): D2H/H2D copies, the staging
    /// pipeline, VRAM → cluster → VRAM, verified. Uses --size as the block size, --count and
    /// --duration per row, --connections and --json/--csv
    #[arg(long = "gpu", id = "gpu", conflicts_with = "sweep")]
    pub(crate) enabled: bool,
    /// With --gpu: the GPU to measure (CUDA ordinal)
    #[arg(long, value_name = "N", default_value_t = 0, requires = "gpu")]
    gpu_index: i32,
    /// With --gpu: bytes of device memory moved per round (e.g. 1GiB, 256MiB)
    #[arg(long, value_name = "SIZE", default_value = "1GiB", requires = "gpu")]
    gpu_bytes: String,
}

/// The settings of `memkv bench` that the GPU benchmark shares.
#[derive(Debug)]
pub(crate) struct Common<'a> {
    /// `--size`: the block size (exactly one).
    pub(crate) size: &'a [String],
    /// `--connections`.
    pub(crate) connections: usize,
    /// `--count`: most rounds per row.
    pub(crate) count: u64,
    /// `--duration`: most seconds per row (after the first [`MIN_ROUNDS`]).
    pub(crate) duration: f64,
    /// `--json`.
    pub(crate) json: bool,
    /// `--csv`.
    pub(crate) csv: bool,
    /// `--no-progress`.
    pub(crate) no_progress: bool,
}

/// The validated arguments.
#[derive(Debug, Clone, Copy)]
struct Plan {
    ordinal: i32,
    bytes: usize,
    block: u64,
    blocks: u64,
    max_rounds: u64,
    duration: Duration,
}

impl Plan {
    fn new(gpu: &GpuArgs, common: &Common<'_>) -> Result<Self> {
        if gpu.gpu_index < 0 {
            bail!("--gpu-index must be a CUDA ordinal (0, 1, …); got {}", gpu.gpu_index);
        }
        let [size] = common.size else {
            bail!("--gpu takes one --size (the block size); got {}: {:?}", common.size.len(), common.size);
        };
        let block = parse_size(size).map_err(|e| anyhow::anyhow!("--size {size:?}: {e}"))?;
        let bytes = parse_size(&gpu.gpu_bytes).map_err(|e| anyhow::anyhow!("--gpu-bytes {:?}: {e}", gpu.gpu_bytes))?;
        if bytes == 0 || block == 0 {
            bail!("--gpu-bytes and --size must be at least 1 byte");
        }
        if block > bytes {
            bail!("--size ({}) must not exceed --gpu-bytes ({})", format_size(block), format_size(bytes));
        }
        let blocks = bytes.div_ceil(block);
        if blocks > MAX_BLOCKS {
            bail!(
                "--gpu-bytes {} in blocks of {} makes {blocks} objects per round; the most is {MAX_BLOCKS}: raise \
                 --size or lower --gpu-bytes",
                format_size(bytes),
                format_size(block)
            );
        }
        if !(common.duration > 0.0 && common.duration <= 3600.0) {
            bail!("--duration must be in (0, 3600] seconds; got {}", common.duration);
        }
        let bytes = usize::try_from(bytes).context("--gpu-bytes does not fit this host's address space")?;
        Ok(Self {
            ordinal: gpu.gpu_index,
            bytes,
            block,
            blocks,
            max_rounds: common.count.max(MIN_ROUNDS),
            duration: Duration::from_secs_f64(common.duration),
        })
    }

    /// Block `i`: its offset in the buffers and its length.
    fn block(&self, i: u64) -> (u64, u64) {
        let off = i * self.block;
        (off, self.block.min(self.bytes as u64 - off))
    }
}

/// Which way a row moves bytes; its ratio is taken against the pinned copy of the same direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Dir {
    D2h,
    H2d,
}

/// One measured row.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    row: u8,
    name: &'static str,
    direction: Dir,
    bytes: u64,
    rounds: u64,
    /// Median over the rounds.
    gib_per_s: f64,
    gib_per_s_min: f64,
    gib_per_s_max: f64,
    /// `gib_per_s` over the pinned copy's (row 3 for D2H rows, row 4 for H2D rows).
    ratio_to_pinned: f64,
}

/// The whole run, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
struct Report {
    gpu_index: i32,
    gpu_bus_id: String,
    bytes: u64,
    block_size: u64,
    blocks: u64,
    slot_size: u64,
    slots: usize,
    rows: Vec<Row>,
    /// Row 5 over row 3.
    staging_vs_pinned: f64,
    target: f64,
    target_met: bool,
    /// Both device buffers read back equal to the written pattern.
    verified: bool,
}

/// Runs `memkv bench --gpu`.
pub(crate) async fn run(conn: &ConnArgs, gpu: &GpuArgs, common: &Common<'_>) -> Result<ExitCode> {
    let plan = Plan::new(gpu, common)?;
    let cuda = match cuda::cuda() {
        Ok(c) => c,
        Err(e) => {
            let why = match e {
                MemError::CudaUnavailable(why) => why,
                other => other.to_string(),
            };
            eprintln!("memkv bench --gpu needs a GPU: {why}");
            return Ok(ExitCode::from(2));
        }
    };
    if plan.ordinal as usize >= cuda.device_count() {
        bail!(
            "--gpu-index {}: this host's CUDA driver sees {} GPU(s), numbered from 0",
            plan.ordinal,
            cuda.device_count()
        );
    }
    let cfg = conn.client_config(&[("num_connections", common.connections.to_string())])?;
    let (staging_size, slot_size) = (cfg.mem.staging_size, cfg.mem.staging_slot);
    if staging_size == 0 {
        bail!(
            "MEMKV_STAGING_SIZE_MB=0 turns staging off, but bench --gpu measures the staging path; set it (e.g. \
             --staging-size-mb 256)"
        );
    }
    let client = Client::new(cfg)?;
    for s in client.servers() {
        if let Err(e) = client.node_info(&s).await {
            bail!("cannot reach {s} before benchmarking: {e}");
        }
    }
    let bar = progress(common);
    let measured = measure_all(cuda, &client, &plan, staging_size, slot_size, &bar).await;
    bar.finish_and_clear();
    cleanup(&client, plan.blocks).await;
    let (report, mismatch) = measured?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if common.csv {
        print_csv(&report);
        eprintln!("{}", target_line(&report));
    } else {
        print_table(&report);
        println!("{}", target_line(&report));
        if report.verified {
            println!(
                "verify: {} blocks read back from the cluster into VRAM match the source byte for byte",
                plan.blocks
            );
        }
    }
    if let Some(m) = mismatch {
        eprintln!("memkv bench --gpu: {m}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn progress(common: &Common<'_>) -> ProgressBar {
    if common.no_progress || common.json {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {pos} rounds {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    b
}

/// Rounds of one row: at least [`MIN_ROUNDS`], then until the row's count or duration runs out.
/// Returns each round's seconds.
async fn rounds(
    plan: &Plan,
    bar: &ProgressBar,
    name: &str,
    mut round: impl AsyncFnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    bar.reset();
    bar.set_prefix(name.to_string());
    let start = Instant::now();
    let mut secs = Vec::new();
    while (secs.len() as u64) < MIN_ROUNDS || ((secs.len() as u64) < plan.max_rounds && start.elapsed() < plan.duration)
    {
        let t = Instant::now();
        round().await.with_context(|| format!("{name}, round {}", secs.len() + 1))?;
        let s = t.elapsed().as_secs_f64();
        secs.push(s);
        bar.inc(1);
        bar.set_message(format!("{:.2} GiB/s", plan.bytes as f64 / s.max(1e-9) / GIB));
    }
    Ok(secs)
}

/// Rounds of a blocking driver copy, run where blocking is allowed.
async fn copy_rounds(
    plan: &Plan,
    bar: &ProgressBar,
    name: &str,
    mut copy: impl FnMut() -> Result<(), MemError>,
) -> Result<Vec<f64>> {
    rounds(plan, bar, name, async || Ok(block_in_place(&mut copy)?)).await
}

/// Page-locked memory as a byte slice, zeroed first so that every byte is initialised.
fn pinned_bytes(p: &mut PinnedHost) -> &mut [u8] {
    // SAFETY: `cuMemHostAlloc` memory is valid for reads and writes of `len` bytes for as long as
    // `p` lives; the `&mut` borrow makes the returned slice the only access to it, and the bytes
    // are written (zeroed) before the slice exists.
    unsafe {
        std::ptr::write_bytes(p.as_ptr(), 0, p.len());
        std::slice::from_raw_parts_mut(p.as_ptr(), p.len())
    }
}

/// Deterministic bytes (xorshift64, 8 bytes per step): no two blocks are alike, so a block read
/// back under the wrong key cannot compare equal.
fn pattern(len: usize) -> Result<Vec<u8>> {
    let mut v = host_buffer(len, 0)?;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for c in v.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes()[..c.len()]);
    }
    Ok(v)
}

/// `len` bytes of ordinary host memory, every page written (faulted in) with `fill`; an error,
/// not an abort, when the host cannot provide them.
fn host_buffer(len: usize, fill: u8) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|e| {
        anyhow::anyhow!("{} of host memory for --gpu-bytes: {e}; lower --gpu-bytes", format_size(len as u64))
    })?;
    v.resize(len, fill);
    Ok(v)
}

/// The first byte at which `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    const PIECE: usize = 64 << 10;
    let piece = a.chunks(PIECE).zip(b.chunks(PIECE)).position(|(x, y)| x != y)?;
    let (x, y) = (&a[piece * PIECE..], &b[piece * PIECE..]);
    x.iter().zip(y).position(|(p, q)| p != q).map(|i| piece * PIECE + i)
}

fn staged(e: StagedError, plan: &Plan) -> anyhow::Error {
    match e {
        StagedError::Absent(i) => anyhow::anyhow!(
            "object gpubench-{i} is absent right after it was written: the cluster evicted it (its memory is below \
             --gpu-bytes {}?); lower --gpu-bytes",
            format_size(plan.bytes as u64)
        ),
        other => other.into(),
    }
}

/// Measures the seven rows and verifies; the second value describes a mismatch.
async fn measure_all(
    cuda: &'static Cuda,
    client: &Client,
    plan: &Plan,
    staging_size: u64,
    slot_size: u64,
    bar: &ProgressBar,
) -> Result<(Report, Option<String>)> {
    let (ord, bytes) = (plan.ordinal, plan.bytes);
    let src = cuda.alloc_device(ord, bytes).context("device buffer (source)")?;
    let dst = cuda.alloc_device(ord, bytes).context("device buffer (destination)")?;
    let (src_addr, dst_addr) = (src.addr(), dst.addr());
    let expected = pattern(bytes)?;
    let mut pageable = host_buffer(bytes, 0xa5)?;
    let mut pinned_mem = cuda.alloc_pinned(bytes).context("pinned host buffer")?;
    let pinned = pinned_bytes(&mut pinned_mem);
    block_in_place(|| cuda.copy_to_device(ord, src_addr, &expected)).context("filling the source buffer")?;

    let mut secs: Vec<(u8, &'static str, Dir, Vec<f64>)> = Vec::new();
    let s = copy_rounds(plan, bar, "1 D2H pageable", || cuda.copy_to_host(ord, &mut pageable, src_addr)).await?;
    secs.push((1, "D2H pageable (cuMemcpyDtoH into a Vec)", Dir::D2h, s));
    let s = copy_rounds(plan, bar, "2 H2D pageable", || cuda.copy_to_device(ord, dst_addr, &pageable)).await?;
    secs.push((2, "H2D pageable (cuMemcpyHtoD from a Vec)", Dir::H2d, s));
    let s = copy_rounds(plan, bar, "3 D2H pinned", || cuda.copy_to_host(ord, pinned, src_addr)).await?;
    secs.push((3, "D2H pinned (into cuMemHostAlloc memory)", Dir::D2h, s));
    let s = copy_rounds(plan, bar, "4 H2D pinned", || cuda.copy_to_device(ord, dst_addr, pinned)).await?;
    secs.push((4, "H2D pinned (from cuMemHostAlloc memory)", Dir::H2d, s));

    // Staging: a pool like the client's, on this GPU's copy engine.
    let pool_mem = cuda.alloc_pinned(staging_size as usize).context("pinned staging memory")?;
    let pool = SlotPool::new(Box::new(pool_mem), slot_size as usize)?;
    let engine = CudaCopy::new(ord)?;
    let segments: Vec<Segment> = (0..plan.blocks)
        .map(|i| {
            let (off, len) = plan.block(i);
            Segment::new(src_addr + off, len, i as usize)
        })
        .collect();
    let s = rounds(plan, bar, "5 staging D2H", async || {
        let mut sent = 0usize;
        let send = |c: Chunk| {
            sent += c.len;
            drop(c); // gives the slot back, as a finished send would
            async { Ok::<(), BoxError>(()) }
        };
        // SAFETY: every segment lies inside `src`, a live allocation of `bytes` on the engine's
        // GPU, which nothing writes while the pipeline runs (it is awaited here).
        unsafe { staging::stage_out(&pool, &engine, &segments, send) }.await?;
        if sent != bytes {
            bail!("the staging pipeline handed over {sent} of {bytes} bytes");
        }
        Ok(())
    })
    .await?;
    secs.push((5, "staging pipeline D2H (stage_out, send drops)", Dir::D2h, s));

    let keys: Vec<String> = (0..plan.blocks).map(|i| format!("gpubench-{i}")).collect();
    let parts = |base: u64| -> Vec<StagedPart<'_>> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                let (off, len) = plan.block(i as u64);
                StagedPart { key: k.as_bytes(), offset: 0, total: len, addr: base + off, len }
            })
            .collect()
    };
    let (put_parts, get_parts) = (parts(src_addr), parts(dst_addr));
    let s = rounds(plan, bar, "6 VRAM -> cluster", async || {
        // SAFETY: every part lies inside `src` (readable by the engine, same GPU), which nothing
        // writes while the transfer runs (it is awaited here).
        unsafe { client.put_staged(&pool, &engine, &put_parts) }.await.map_err(|e| staged(e, plan))
    })
    .await?;
    secs.push((6, "VRAM -> cluster (put_staged)", Dir::D2h, s));

    // Clear the destination (rows 2 and 4 wrote the pattern there) so row 7 must deliver it.
    pageable.fill(0);
    block_in_place(|| cuda.copy_to_device(ord, dst_addr, &pageable)).context("clearing the destination buffer")?;
    let s = rounds(plan, bar, "7 cluster -> VRAM", async || {
        // SAFETY: every part lies inside `dst` (writable by the engine, same GPU), which nothing
        // else reads or writes while the transfer runs (it is awaited here).
        unsafe { client.get_staged(&pool, &engine, &get_parts) }.await.map_err(|e| staged(e, plan))
    })
    .await?;
    secs.push((7, "cluster -> VRAM (get_staged)", Dir::H2d, s));

    let mismatch = block_in_place(|| -> Result<Option<String>> {
        cuda.copy_to_host(ord, &mut pageable, src_addr).context("reading the source buffer back")?;
        if let Some(at) = first_difference(&pageable, &expected) {
            return Ok(Some(format!(
                "the source device buffer changed during the run (first difference at byte {at})"
            )));
        }
        cuda.copy_to_host(ord, &mut pageable, dst_addr).context("reading the destination buffer back")?;
        Ok(first_difference(&pageable, &expected).map(|at| {
            let i = at as u64 / plan.block;
            format!(
                "VRAM read back from the cluster differs from what was written: first difference at byte {at} \
                 (block {i}, object gpubench-{i})"
            )
        }))
    })?;

    let rows = summarise(&secs, bytes as u64);
    let ratio = |n: u8| rows.iter().find(|r| r.row == n).map_or(0.0, |r| r.ratio_to_pinned);
    let staging_vs_pinned = ratio(5);
    Ok((
        Report {
            gpu_index: ord,
            gpu_bus_id: cuda.bus_id(ord).unwrap_or_else(|e| format!("? ({e})")),
            bytes: bytes as u64,
            block_size: plan.block,
            blocks: plan.blocks,
            slot_size,
            slots: pool.slots(),
            rows,
            staging_vs_pinned,
            target: TARGET,
            target_met: staging_vs_pinned >= TARGET,
            verified: mismatch.is_none(),
        },
        mismatch,
    ))
}

/// Medians and ratios from each row's round times.
fn summarise(secs: &[(u8, &'static str, Dir, Vec<f64>)], bytes: u64) -> Vec<Row> {
    let mut rows: Vec<Row> = secs
        .iter()
        .map(|(row, name, direction, s)| {
            let mut rates: Vec<f64> = s.iter().map(|t| bytes as f64 / t.max(1e-9) / GIB).collect();
            rates.sort_by(f64::total_cmp);
            Row {
                row: *row,
                name,
                direction: *direction,
                bytes,
                rounds: s.len() as u64,
                gib_per_s: median(&rates),
                gib_per_s_min: rates.first().copied().unwrap_or(0.0),
                gib_per_s_max: rates.last().copied().unwrap_or(0.0),
                ratio_to_pinned: 0.0,
            }
        })
        .collect();
    let pinned = |d: Dir| {
        let n = if d == Dir::D2h { 3 } else { 4 };
        rows.iter().find(|r| r.row == n).map_or(0.0, |r| r.gib_per_s)
    };
    let (d2h, h2d) = (pinned(Dir::D2h), pinned(Dir::H2d));
    for r in &mut rows {
        let base = if r.direction == Dir::D2h { d2h } else { h2d };
        r.ratio_to_pinned = if base > 0.0 { r.gib_per_s / base } else { 0.0 };
    }
    rows
}

/// The median of sorted values.
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn target_line(r: &Report) -> String {
    format!(
        "staging pipeline D2H / D2H pinned: {:.1}% (issue 5 target >= {:.0}%): {}",
        r.staging_vs_pinned * 100.0,
        r.target * 100.0,
        if r.target_met { "PASS" } else { "FAIL" }
    )
}

fn print_table(r: &Report) {
    println!(
        "GPU {} ({}): {} per round in {} blocks of {}; {} staging slots of {}",
        r.gpu_index,
        r.gpu_bus_id,
        format_size(r.bytes),
        r.blocks,
        format_size(r.block_size),
        r.slots,
        format_size(r.slot_size)
    );
    println!("{:<3} {:<46} {:>12} {:>7} {:>9} {:>10}", "row", "path", "bytes", "rounds", "GiB/s", "vs pinned");
    for row in &r.rows {
        println!(
            "{:<3} {:<46} {:>12} {:>7} {:>9.3} {:>9.1}%",
            row.row,
            row.name,
            format_size(row.bytes),
            row.rounds,
            row.gib_per_s,
            row.ratio_to_pinned * 100.0
        );
    }
}

/// The rows as CSV, with the JSON rows' field names as the header.
fn print_csv(r: &Report) {
    println!("row,name,direction,bytes,rounds,gib_per_s,gib_per_s_min,gib_per_s_max,ratio_to_pinned");
    for row in &r.rows {
        println!(
            "{},{},{},{},{},{:.6},{:.6},{:.6},{:.6}",
            row.row,
            row.name,
            if row.direction == Dir::D2h { "d2h" } else { "h2d" },
            row.bytes,
            row.rounds,
            row.gib_per_s,
            row.gib_per_s_min,
            row.gib_per_s_max,
            row.ratio_to_pinned
        );
    }
}

/// Deletes the benchmark's objects (also after a failed run); stops at the first failure, which
/// is only reported.
async fn cleanup(client: &Client, blocks: u64) {
    for i in 0..blocks {
        if let Err(e) = client.delete(format!("gpubench-{i}").as_bytes()).await {
            eprintln!(
                "memkv bench --gpu: could not delete object gpubench-{i} ({e}); it and the later gpubench-* objects \
                 stay until evicted or overwritten"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_the_first_differing_byte_or_none() {
        let a = pattern(200_000).unwrap();
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b[150_001] ^= 1;
        b[199_999] ^= 1;
        assert_eq!(first_difference(&a, &b), Some(150_001));
    }

    fn args(size: &[String], bytes: &str) -> Result<Plan> {
        let gpu = GpuArgs { enabled: true, gpu_index: 0, gpu_bytes: bytes.into() };
        let common =
            Common { size, connections: 4, count: 1, duration: 5.0, json: false, csv: false, no_progress: true };
        Plan::new(&gpu, &common)
    }

    #[test]
    fn plan_cuts_the_buffer_into_size_blocks_with_a_ragged_tail_and_runs_three_rounds() {
        let p = args(&["2MiB".into()], "5MiB").unwrap();
        assert_eq!((p.blocks, p.block(0), p.block(2)), (3, (0, 2 << 20), (4 << 20, 1 << 20)));
        assert_eq!(p.max_rounds, MIN_ROUNDS, "--count 1 still runs {MIN_ROUNDS} rounds");
        assert!(args(&["4MiB".into()], "2MiB").is_err(), "a block larger than the buffer");
        assert!(args(&["4KiB".into(), "2MiB".into()], "1GiB").is_err(), "two block sizes");
        assert!(args(&["1".into()], "2MiB").is_err(), "more than MAX_BLOCKS objects");
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
        assert_eq!(median(&[]), 0.0);
    }
}
