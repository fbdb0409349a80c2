//! The one-sided protocol end to end over the same-host shared-memory transport, against real
//! `memkv-server` processes: RESERVE → write → COMMIT and LOOKUP → read → RELEASE, several client
//! processes at once, a client killed mid-transfer, eviction racing pinned reads, and the
//! transport choice (`auto`, `shm`, `tcp`, a node without a shared-memory socket). Small
//! transfers go inline on the same session (a GET entry of at most `INLINE_MAX`, 16 KiB; a PUT
//! of at most 64 KiB), so these tests move larger ones.
//! 127.0.10.x.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Creds, Node, cli_bin, pattern as block, runtime};
use memkv::client::{GetItem, PutItem};

/// `memkv_requests_total{op="<op>"}` of a node.
fn requests(node: &Node, op: &str) -> u64 {
    let (_, body) = node.admin_get("/v1/metrics");
    let want = format!("memkv_requests_total{{op=\"{op}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&want)).map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

fn status_u64(node: &Node, field: &str) -> u64 {
    node.status()[field].as_u64().unwrap_or_else(|| panic!("{field} in status"))
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn batches_ranges_and_single_keys_move_one_sidedly_and_verify() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.10.1", &[]);
    let client = creds.client(&[&node], &[("transport", "shm")]);
    let rt = runtime();
    rt.block_on(async {
        let items: Vec<PutItem> =
            (0..16).map(|i| PutItem::whole(format!("b-{i}"), block((64 << 10) + i as usize, i))).collect();
        client.put_batch(&items).await.unwrap();
        // One object in three ranges, sent as three one-sided parts.
        let whole = block(300_000, 99);
        for (off, end) in [(200_000, 300_000), (0, 100_000), (100_000, 200_000)] {
            client.put_range(b"ranged", off, 300_000, whole.slice(off as usize..end as usize)).await.unwrap();
        }
        client.put(b"single", block(5, 5)).await.unwrap();

        let gets: Vec<GetItem> = (0..16).map(|i| GetItem::whole(format!("b-{i}"))).collect();
        let got = client.get_batch(&gets).await.unwrap();
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.as_ref(), Some(&items[i].data), "b-{i}");
        }
        assert_eq!(client.get(b"ranged").await.unwrap(), Some(whole.clone()));
        assert_eq!(client.get_range(b"ranged", 123_456, 1000).await.unwrap(), Some(whole.slice(123_456..124_456)));
        assert_eq!(client.get(b"single").await.unwrap(), Some(block(5, 5)));
        assert_eq!(client.get(b"absent").await.unwrap(), None);
        let e = client.get_range(b"single", 10, 10).await.unwrap_err().to_string();
        assert!(e.contains("InvalidRequest"), "a range outside the object: {e}");
        assert_eq!(client.exists(&[b"single".as_slice(), b"absent"]).await.unwrap(), vec![Some(5), None]);
        assert!(client.delete(b"single").await.unwrap());
        assert_eq!(client.get(b"single").await.unwrap(), None);
    });
    // The large bytes went through the arena, not the socket: RESERVE/COMMIT and LOOKUP/RELEASE.
    // Only the 5-byte PUT went inline (PUTs of at most 64 KiB: a round trip costs more).
    assert!(requests(&node, "commit") >= 4 && requests(&node, "lookup") >= 4, "{}", node.admin_get("/v1/metrics").1);
    assert_eq!(requests(&node, "put_batch") + requests(&node, "get_batch") + requests(&node, "get"), 0);
    assert_eq!(requests(&node, "put"), 1);
    assert_eq!(status_u64(&node, "leases"), 0, "every pin and reservation was released");
}

#[test]
fn several_client_processes_at_once_each_read_back_exactly_what_they_wrote() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.10.2", &["--memory", "512MiB"]);
    let dir = tempfile::tempdir().unwrap();
    let env = |cmd: &mut Command| {
        cmd.env_clear().envs(creds.env()).env("MEMKV_SERVERS", node.data.to_string()).env("MEMKV_TRANSPORT", "shm");
    };
    // Four writers in parallel, then four readers in parallel, each its own process.
    let files: Vec<_> = (0..4u64)
        .map(|i| {
            let p = dir.path().join(format!("in-{i}"));
            std::fs::write(&p, block((3 << 20) + i as usize * 4099, i)).unwrap();
            p
        })
        .collect();
    let run_all = |args: &dyn Fn(usize) -> Vec<String>| {
        let children: Vec<_> = (0..4)
            .map(|i| {
                let mut c = Command::new(cli_bin());
                env(&mut c);
                c.args(args(i)).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    };
    run_all(&|i| vec!["put".into(), format!("proc-{i}"), files[i].display().to_string()]);
    // A bench process runs alongside the readers.
    let mut bench = Command::new(cli_bin());
    env(&mut bench);
    let bench = bench
        .args(["bench", "--size", "256KiB", "--count", "400", "--duration", "5", "--json", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    run_all(&|i| vec!["get".into(), format!("proc-{i}"), dir.path().join(format!("out-{i}")).display().to_string()]);
    for (i, f) in files.iter().enumerate() {
        assert_eq!(std::fs::read(dir.path().join(format!("out-{i}"))).unwrap(), std::fs::read(f).unwrap());
    }
    let out = bench.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let phases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in phases.as_array().unwrap() {
        assert_eq!((p["errors"].as_u64(), p["misses"].as_u64()), (Some(0), Some(0)), "{p}");
    }
    assert!(requests(&node, "commit") >= 4);
    eventually("every lease is released", || status_u64(&node, "leases") == 0);
}

#[test]
fn a_client_killed_mid_transfer_leaves_no_lease_and_no_memory_behind() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.10.3", &["--memory", "1GiB"]);
    let mut bench = Command::new(cli_bin());
    bench
        .env_clear()
        .envs(creds.env())
        .env("MEMKV_SERVERS", node.data.to_string())
        .env("MEMKV_TRANSPORT", "shm")
        .args(["bench", "--op", "put", "--size", "4MiB", "--keys", "16", "--inflight", "16"])
        .args(["--count", "100000", "--duration", "20", "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = bench.spawn().unwrap();
    eventually("the client is storing blocks", || status_u64(&node, "objects") >= 4);
    child.kill().unwrap();
    child.wait().unwrap();
    eventually("the dead client's sessions are gone", || status_u64(&node, "connections") == 0);
    let s = node.status();
    assert_eq!(s["leases"], 0, "{s}");
    // Only complete objects hold memory: every reservation of the dead client was freed.
    let objects = s["objects"].as_u64().unwrap();
    assert_eq!(s["used_bytes"].as_u64().unwrap(), objects * (4 << 20), "{s}");
    // The node serves the next client normally.
    let client = creds.client(&[&node], &[("transport", "shm")]);
    runtime().block_on(async {
        client.put(b"after", block(1 << 20, 1)).await.unwrap();
        assert_eq!(client.get(b"after").await.unwrap(), Some(block(1 << 20, 1)));
    });
}

#[test]
fn puts_of_at_most_64_kib_go_inline_and_larger_ones_one_sidedly() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.10.7", &[]);
    let client = creds.client(&[&node], &[("transport", "shm")]);
    let rt = runtime();
    let small: Vec<PutItem> = (0..16).map(|i| PutItem::whole(format!("s-{i}"), block(4096, i))).collect();
    let over: Vec<PutItem> = (0..2).map(|i| PutItem::whole(format!("o-{i}"), block((32 << 10) + 1, i))).collect();
    rt.block_on(async {
        // 16 x 4 KiB is one inline PUT_BATCH, and 64 KiB one inline PUT.
        client.put_batch(&small).await.unwrap();
        client.put(b"edge", block(64 << 10, 7)).await.unwrap();
        assert_eq!((requests(&node, "put_batch"), requests(&node, "put"), requests(&node, "commit")), (1, 1, 0));
        // One byte more goes through the arena: a batch and a single value.
        client.put_batch(&over).await.unwrap();
        client.put(b"past", block((64 << 10) + 1, 8)).await.unwrap();
        assert_eq!((requests(&node, "put_batch"), requests(&node, "put"), requests(&node, "commit")), (1, 1, 2));
        for it in small.iter().chain(&over) {
            assert_eq!(client.get(&it.key).await.unwrap().as_ref(), Some(&it.data));
        }
        assert_eq!(client.get(b"edge").await.unwrap(), Some(block(64 << 10, 7)));
        assert_eq!(client.get(b"past").await.unwrap(), Some(block((64 << 10) + 1, 8)));
    });
}

#[test]
fn eviction_racing_pinned_reads_never_hands_out_a_wrong_block() {
    let creds = Creds::new();
    // 8 MiB of arena for 64 KiB blocks: the writer evicts all the time.
    let node = Node::start(&creds, "127.0.10.4", &["--memory", "8MiB"]);
    let client = creds.client(&[&node], &[("transport", "shm")]);
    let len = 64 << 10;
    let rt = runtime();
    let (hits, checked) = rt.block_on(async {
        let writer = {
            let c = client.clone();
            tokio::spawn(async move {
                for i in 0..1500u64 {
                    c.put(format!("k-{}", i % 400).as_bytes(), block(len, i % 400)).await.unwrap();
                }
            })
        };
        let readers: Vec<_> = (0..3u64)
            .map(|r| {
                let c = client.clone();
                tokio::spawn(async move {
                    let (mut hits, mut checked) = (0, 0);
                    let deadline = Instant::now() + Duration::from_secs(20);
                    for n in 0..600u64 {
                        if Instant::now() > deadline {
                            break;
                        }
                        let keys: Vec<GetItem> =
                            (0..8).map(|j| GetItem::whole(format!("k-{}", (n * 7 + j + r * 131) % 400))).collect();
                        let got = c.get_batch(&keys).await.unwrap();
                        for (k, g) in keys.iter().zip(got) {
                            checked += 1;
                            if let Some(b) = g {
                                let seed: u64 = std::str::from_utf8(&k.key[2..]).unwrap().parse().unwrap();
                                assert_eq!(b, block(len, seed), "{:?} came back with another block's bytes", k.key);
                                hits += 1;
                            }
                        }
                    }
                    (hits, checked)
                })
            })
            .collect();
        writer.await.unwrap();
        let mut total = (0, 0);
        for r in readers {
            let (h, c) = r.await.unwrap();
            total = (total.0 + h, total.1 + c);
        }
        total
    });
    let s = node.status();
    println!("checked {checked} reads, {hits} hits, {} evictions", s["evictions"]);
    assert!(s["evictions"].as_u64().unwrap() > 100, "the test must race reads with eviction: {s}");
    assert!(hits > 0, "some reads must hit");
    eventually("every pin is released", || status_u64(&node, "leases") == 0);
}

#[test]
fn auto_picks_shared_memory_on_this_host_and_tcp_when_the_node_offers_none() {
    let creds = Creds::new();
    let shm = Node::start(&creds, "127.0.10.5", &[]);
    let plain = Node::start(&creds, "127.0.10.6", &["--shm-socket", "off"]);
    let rt = runtime();
    let auto = creds.client(&[&shm, &plain], &[]);
    rt.block_on(async {
        // Above the inline limits, so that shared memory moves them one-sidedly.
        for i in 0..40u64 {
            auto.put(format!("a-{i}").as_bytes(), block(128 << 10, i)).await.unwrap();
            assert_eq!(auto.get(format!("a-{i}").as_bytes()).await.unwrap(), Some(block(128 << 10, i)));
        }
    });
    assert!(requests(&shm, "commit") > 0 && requests(&shm, "put") == 0);
    assert!(requests(&plain, "put") > 0 && requests(&plain, "commit") == 0);
    assert!(plain.status()["transports"]["shm"].is_null());
    // `shm` towards a node without a socket fails with the reason, `tcp` never touches it.
    let forced = creds.client(&[&plain], &[("transport", "shm")]);
    let e = rt.block_on(forced.put(b"x", block(10, 1))).unwrap_err().to_string();
    assert!(e.contains("MEMKV_TRANSPORT=shm cannot be honoured") && e.contains("--shm-socket off"), "{e}");
    let commits = requests(&shm, "commit");
    let tcp = creds.client(&[&shm], &[("transport", "tcp")]);
    rt.block_on(tcp.put(b"t", block(128 << 10, 2))).unwrap();
    assert_eq!(requests(&shm, "commit"), commits);
}

#[test]
fn a_node_started_with_an_unusable_rdma_device_says_why_and_exits() {
    if memkv::testing::rdma_host() {
        return; // an RDMA host: the device may exist
    }
    let creds = Creds::new();
    let out = Command::new(common::server_bin())
        .args(["--listen", "127.0.10.7:0", "--memory", "64MiB", "--rdma-device", "mlx5_0"])
        .env_clear()
        .envs(creds.env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rdma-device / MEMKV_RDMA_DEVICE") && err.contains("RDMA is unavailable"), "{err}");
}

#[test]
fn a_node_that_requires_payload_macs_offers_no_one_sided_transport() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.10.8", &["--require-payload-mac"]);
    assert!(node.status()["transports"]["shm"].is_null());
    let client = creds.client(&[&node], &[]);
    runtime().block_on(async {
        client.put(b"k", block(1000, 3)).await.unwrap();
        assert_eq!(client.get(b"k").await.unwrap(), Some(block(1000, 3)));
    });
    assert!(requests(&node, "put") == 1 && requests(&node, "commit") == 0);
}

#[test]
fn a_node_restarted_without_shared_memory_is_reached_over_tcp_after_the_reconnect() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.10.9", &[]);
    let port = node.data.port().to_string();
    let client = creds.client(&[&node], &[]);
    let rt = runtime();
    rt.block_on(client.put(b"before", block(128 << 10, 1))).unwrap();
    assert!(requests(&node, "commit") > 0, "first over shared memory");
    node.kill();
    let node = Node::start_on(&creds, "127.0.10.9", &port, &["--shm-socket", "off"]);
    // The first attempts fail on the dead sessions or inside the reconnect backoff; then the
    // client chooses again and finds only TCP.
    let deadline = Instant::now() + Duration::from_secs(10);
    rt.block_on(async {
        while client.put(b"after", block(128 << 10, 2)).await.is_err() {
            assert!(Instant::now() < deadline, "the restarted node never became reachable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(client.get(b"after").await.unwrap(), Some(block(128 << 10, 2)));
    });
    assert!(requests(&node, "put") > 0 && requests(&node, "commit") == 0);
}
