//! What a client shows operators about its memory: the Prometheus text at
//! `MEMKV_PROMETHEUS_BIND`/metrics and the periodic summary log line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{MemStats, Registry};

/// The Prometheus text exposition of `s`.
pub fn render(s: &MemStats) -> String {
    let c = &s.cache;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP memkv_client_{name} {help}\n# TYPE memkv_client_{name} {kind}\nmemkv_client_{name} {v}"
        );
    };
    metric("mr_cache_hits_total", "counter", "MR cache lookups answered by a cached registration.", c.hits as f64);
    metric("mr_cache_misses_total", "counter", "MR cache lookups that had to register.", c.misses as f64);
    metric(
        "mr_cache_evictions_total",
        "counter",
        "Registrations released to stay within the limits (LRU).",
        c.evictions as f64,
    );
    metric(
        "mr_cache_invalidations_total",
        "counter",
        "Registrations dropped by a deregistration.",
        c.invalidations as f64,
    );
    metric("mr_cache_registrations_total", "counter", "Registrations made.", c.registrations as f64);
    metric("mr_cache_register_errors_total", "counter", "Registrations that failed.", c.register_errors as f64);
    metric(
        "mr_cache_register_seconds_total",
        "counter",
        "Time spent registering memory.",
        c.register_nanos as f64 / 1e9,
    );
    metric("mr_cache_entries", "gauge", "Registrations cached now.", c.entries as f64);
    metric("mr_cache_registered_bytes", "gauge", "Bytes covered by cached registrations.", c.registered_bytes as f64);
    metric("mr_cache_max_entries", "gauge", "MEMKV_MR_CACHE_MAX_ENTRIES.", c.max_entries as f64);
    metric("mr_cache_max_bytes", "gauge", "MEMKV_MR_CACHE_MAX_GB in bytes.", c.max_bytes as f64);
    metric("regions", "gauge", "Regions registered by the application.", s.regions as f64);
    metric("host_registered_bytes", "gauge", "Registered host memory.", s.host_bytes as f64);
    metric("gdr_registered_bytes", "gauge", "Registered GPU memory reached by GPUDirect RDMA.", s.gdr_bytes as f64);
    metric(
        "staged_registered_bytes",
        "gauge",
        "Registered GPU memory moved through staging slots.",
        s.staged_bytes as f64,
    );
    if let Some(p) = &s.staging {
        metric("staging_slots", "gauge", "Staging slots.", p.slots as f64);
        metric("staging_slot_bytes", "gauge", "Bytes per staging slot.", p.slot_size as f64);
        metric("staging_slots_busy", "gauge", "Staging slots in use now.", p.busy as f64);
        metric("staging_slots_peak", "gauge", "Most staging slots ever in use at once.", p.peak_busy as f64);
        metric("staging_waits_total", "counter", "Slot requests that waited for a free slot.", p.waits as f64);
        metric("staging_wait_seconds_total", "counter", "Time spent waiting for slots.", p.wait_ns_total as f64 / 1e9);
        metric("staging_out_bytes_total", "counter", "Bytes copied GPU → slot.", p.bytes_staged_out as f64);
        metric("staging_in_bytes_total", "counter", "Bytes copied slot → GPU.", p.bytes_staged_in as f64);
    }
    out
}

/// One line for the log.
pub fn summary(s: &MemStats) -> String {
    let c = &s.cache;
    let mut line = format!(
        "MEMKV memory: {} regions ({} B host, {} B GPUDirect, {} B staged); MR cache {} entries / {} B, hit rate {:.1}% \
         ({} hits, {} misses), {} evictions, {} invalidations, {:.3} s registering",
        s.regions,
        s.host_bytes,
        s.gdr_bytes,
        s.staged_bytes,
        c.entries,
        c.registered_bytes,
        c.hit_rate() * 100.0,
        c.hits,
        c.misses,
        c.evictions,
        c.invalidations,
        c.register_nanos as f64 / 1e9
    );
    if let Some(p) = &s.staging {
        let _ = write!(
            line,
            "; staging {}/{} slots busy (peak {}), {} waits, {} B out, {} B in",
            p.busy, p.slots, p.peak_busy, p.waits, p.bytes_staged_out, p.bytes_staged_in
        );
    }
    line
}

/// Serves [`render`] at `http://addr/metrics` on the current tokio runtime; returns the bound
/// address (port 0 picks one).
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = Arc::clone(&registry);
            async move {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&registry.stats()))
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("MEMKV client metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

/// Logs [`summary`] every `every`, when anything changed since the last line.
pub async fn log_every(registry: Arc<Registry>, every: Duration) {
    let mut last = None;
    loop {
        tokio::time::sleep(every).await;
        let s = registry.stats();
        if last != Some(s) {
            tracing::info!("{}", summary(&s));
            last = Some(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::cache::CacheStats;
    use crate::mem::staging::PoolStats;

    #[test]
    fn render_and_summary_show_the_counters() {
        let s = MemStats {
            cache: CacheStats { hits: 9, misses: 1, entries: 2, registered_bytes: 4096, ..CacheStats::default() },
            regions: 2,
            host_bytes: 4096,
            staging: Some(PoolStats { slots: 16, busy: 3, ..PoolStats::default() }),
            ..MemStats::default()
        };
        let text = render(&s);
        assert!(text.contains("memkv_client_mr_cache_hits_total 9\n"), "{text}");
        assert!(text.contains("memkv_client_mr_cache_registered_bytes 4096\n"), "{text}");
        assert!(text.contains("memkv_client_staging_slots_busy 3\n"), "{text}");
        let line = summary(&s);
        assert!(line.contains("hit rate 90.0% (9 hits, 1 misses)"), "{line}");
        assert!(line.contains("staging 3/16 slots busy"), "{line}");
        assert!(!render(&MemStats::default()).contains("memkv_client_staging_"), "no pool, no staging metrics");
    }
}
