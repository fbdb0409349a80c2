//! Node counters and their Prometheus text rendering.
//!
//! Owns: the atomic counters the sessions bump and the admin endpoints read. Counting is a
//! relaxed atomic add, never a lock on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::drive::TierSnapshot;
use super::store::StoreCounters;
use crate::wire::{Op, Status};

const OPS: [Op; 13] = [
    Op::Hello,
    Op::Put,
    Op::Get,
    Op::Exists,
    Op::Delete,
    Op::NodeInfo,
    Op::PutBatch,
    Op::GetBatch,
    Op::Reserve,
    Op::Commit,
    Op::Lookup,
    Op::Release,
    Op::Connect,
];
const STATUSES: usize = 13;

/// Why a peer failed authentication.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AuthFailure {
    BadMac = 0,
    Replay = 1,
    ClockDrift = 2,
}

const AUTH_REASONS: [&str; 3] = ["bad_mac", "replay", "clock_drift"];

/// Counters of one node.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    requests: [AtomicU64; OPS.len()],
    errors: [AtomicU64; STATUSES],
    auth_failures: [AtomicU64; 3],
    /// Frames rejected before authentication (bad magic, newer version, oversized fields).
    pub(crate) invalid_frames: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    /// One-sided reservations and pins held by clients now.
    pub(crate) leases: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

/// A relaxed counter increment: the only way counters move.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn request(&self, op: Op) {
        if let Some(i) = OPS.iter().position(|&o| o == op) {
            add(&self.requests[i], 1);
        }
    }

    pub(crate) fn error(&self, s: Status) {
        if let Some(c) = self.errors.get(s as usize) {
            add(c, 1);
        }
    }

    pub(crate) fn auth_failure(&self, why: AuthFailure) {
        add(&self.auth_failures[why as usize], 1);
    }

    pub(crate) fn auth_failures_total(&self) -> u64 {
        self.auth_failures.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn auth_failures_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        AUTH_REASONS.iter().zip(&self.auth_failures).map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
    }

    pub(crate) fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// A frame rejected before authentication.
    pub(crate) fn invalid_frame(&self) {
        add(&self.invalid_frames, 1);
    }

    pub(crate) fn add_in(&self, n: u64) {
        add(&self.bytes_in, n);
    }

    pub(crate) fn add_out(&self, n: u64) {
        add(&self.bytes_out, n);
    }
}

/// Gauges and counters that live outside [`Stats`] (store and process), for one rendering.
pub(crate) struct Snapshot {
    pub(crate) uptime_secs: f64,
    pub(crate) capacity: u64,
    pub(crate) used: u64,
    pub(crate) objects: u64,
    pub(crate) store: StoreCounters,
    /// The drive tier, when the node has drives.
    pub(crate) tier: Option<TierSnapshot>,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Prometheus text exposition (format 0.0.4) of the node's state.
pub(crate) fn render(stats: &Stats, s: &Snapshot) -> String {
    let mut o = String::with_capacity(4096);
    let l = Stats::load;
    metric(&mut o, "memkv_uptime_seconds", "gauge", "Seconds since the node started.", &[("", s.uptime_secs)]);
    metric(&mut o, "memkv_capacity_bytes", "gauge", "DRAM arena size.", &[("", s.capacity as f64)]);
    metric(
        &mut o,
        "memkv_used_bytes",
        "gauge",
        "Arena bytes in use (incl. evicted objects still being read).",
        &[("", s.used as f64)],
    );
    metric(&mut o, "memkv_objects", "gauge", "Complete objects stored.", &[("", s.objects as f64)]);
    metric(&mut o, "memkv_hits_total", "counter", "GET lookups that found an object.", &[("", s.store.hits as f64)]);
    metric(&mut o, "memkv_misses_total", "counter", "GET lookups that found nothing.", &[("", s.store.misses as f64)]);
    metric(
        &mut o,
        "memkv_evictions_total",
        "counter",
        "Objects evicted to make room.",
        &[("", s.store.evictions as f64)],
    );
    metric(
        &mut o,
        "memkv_evicted_bytes_total",
        "counter",
        "Bytes of evicted objects.",
        &[("", s.store.evicted_bytes as f64)],
    );
    metric(
        &mut o,
        "memkv_partial_expired_total",
        "counter",
        "Partly written ranged objects dropped after the partial timeout.",
        &[("", s.store.partial_expired as f64)],
    );
    metric(&mut o, "memkv_connections", "gauge", "Open client connections.", &[("", l(&stats.connections) as f64)]);
    metric(
        &mut o,
        "memkv_connections_total",
        "counter",
        "Client connections accepted.",
        &[("", l(&stats.connections_total) as f64)],
    );
    metric(
        &mut o,
        "memkv_leases",
        "gauge",
        "One-sided reservations and pins held by clients now (shared memory, RDMA).",
        &[("", l(&stats.leases) as f64)],
    );
    metric(
        &mut o,
        "memkv_received_bytes_total",
        "counter",
        "Payload bytes received.",
        &[("", l(&stats.bytes_in) as f64)],
    );
    metric(&mut o, "memkv_sent_bytes_total", "counter", "Payload bytes sent.", &[("", l(&stats.bytes_out) as f64)]);
    metric(
        &mut o,
        "memkv_invalid_frames_total",
        "counter",
        "Frames rejected before authentication (garbage, newer version, oversized).",
        &[("", l(&stats.invalid_frames) as f64)],
    );
    let req: Vec<(String, f64)> =
        OPS.iter().zip(&stats.requests).map(|(op, c)| (format!("op=\"{}\"", op.name()), l(c) as f64)).collect();
    let req: Vec<(&str, f64)> = req.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    metric(&mut o, "memkv_requests_total", "counter", "Requests by op.", &req);
    let errs: Vec<(String, f64)> = (0..STATUSES as u16)
        .filter_map(Status::from_u16)
        .filter(|s| *s != Status::Ok)
        .map(|s| (format!("status=\"{}\"", s.name()), l(&stats.errors[s as usize]) as f64))
        .collect();
    let errs: Vec<(&str, f64)> = errs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    metric(&mut o, "memkv_errors_total", "counter", "Error answers by status.", &errs);
    let auth: Vec<(String, f64)> =
        stats.auth_failures_by_reason().map(|(r, v)| (format!("reason=\"{r}\""), v as f64)).collect();
    let auth: Vec<(&str, f64)> = auth.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    metric(&mut o, "memkv_auth_failures_total", "counter", "Rejected authentication attempts and frames.", &auth);
    if let Some(t) = &s.tier {
        render_tier(&mut o, t);
    }
    o
}

fn render_tier(o: &mut String, t: &TierSnapshot) {
    let counters: [(&str, &str, &str, u64); 10] = [
        ("memkv_drive_objects", "gauge", "Objects in the drive tier (on a drive or queued for one).", t.objects),
        ("memkv_drive_queued_bytes", "gauge", "Bytes of writes waiting for the drives.", t.queued_bytes),
        ("memkv_drive_hits_total", "counter", "DRAM misses served from a drive (and promoted).", t.drive_hits),
        (
            "memkv_drive_misses_total",
            "counter",
            "Drive reads that produced nothing (damaged, evicted meanwhile, no room).",
            t.drive_misses,
        ),
        (
            "memkv_drive_corrupt_records_total",
            "counter",
            "Records that failed verification on read; dropped, never served.",
            t.corrupt,
        ),
        ("memkv_drive_evictions_total", "counter", "Objects evicted from the drives to make room.", t.evictions),
        ("memkv_drive_evicted_bytes_total", "counter", "Bytes of objects evicted from the drives.", t.evicted_bytes),
        (
            "memkv_drive_reinserted_total",
            "counter",
            "Objects read since written, kept when their segment was reclaimed.",
            t.reinserted,
        ),
        (
            "memkv_drive_rejected_writes_total",
            "counter",
            "Writes no drive could take (too large, no drive online).",
            t.rejected,
        ),
        ("memkv_drive_flushes_total", "counter", "Explicit flushes (POST /v1/flush).", t.flushes),
    ];
    for (name, kind, help, v) in counters {
        metric(o, name, kind, help, &[("", v as f64)]);
    }
    type Gauge = fn(&super::drive::DriveSnapshot) -> f64;
    let per_drive: [(&str, &str, &str, Gauge); 5] = [
        ("memkv_drive_online", "gauge", "1 when the drive is online, 0 when it failed.", |d| {
            f64::from(u8::from(d.online))
        }),
        ("memkv_drive_capacity_bytes", "gauge", "Bytes MemKV may use on the drive.", |d| d.capacity as f64),
        ("memkv_drive_used_bytes", "gauge", "Bytes of segment files on the drive.", |d| d.used as f64),
        ("memkv_drive_write_errors_total", "counter", "Failed writes and syncs on the drive.", |d| {
            d.write_errors as f64
        }),
        ("memkv_drive_read_errors_total", "counter", "Failed reads on the drive.", |d| d.read_errors as f64),
    ];
    for (name, kind, help, f) in per_drive {
        let labels: Vec<(String, f64)> = t
            .drives
            .iter()
            .map(|d| (format!("drive=\"{}\"", d.path.replace('\\', "\\\\").replace('"', "\\\"")), f(d)))
            .collect();
        let labels: Vec<(&str, f64)> = labels.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        metric(o, name, kind, help, &labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_carries_counters_with_labels() {
        let st = Stats::default();
        st.request(Op::Get);
        st.request(Op::Get);
        st.error(Status::NotFound);
        st.auth_failure(AuthFailure::Replay);
        let snap = Snapshot {
            uptime_secs: 1.0,
            capacity: 10,
            used: 5,
            objects: 1,
            store: StoreCounters { hits: 2, misses: 3, ..StoreCounters::default() },
            tier: None,
        };
        let t = render(&st, &snap);
        assert!(t.contains("memkv_requests_total{op=\"get\"} 2"));
        assert!(t.contains("memkv_errors_total{status=\"NotFound\"} 1"));
        assert!(t.contains("memkv_auth_failures_total{reason=\"replay\"} 1"));
        assert!(t.contains("memkv_capacity_bytes 10"));
        assert_eq!(st.auth_failures_total(), 1);
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "bad sample line {line}");
        }
    }
}
