//! Nodes that die, come back, never existed, stall, shut down, or hold another cluster key; and
//! the admin endpoints operators watch. Real `memkv-server` processes on 127.0.2.x, one set of
//! addresses per test so the tests run in parallel.
mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Creds, Node, runtime};
use memkv::client::{ClientError, GetItem, PutItem};
use memkv::config::ServerAddr;

/// The harness's connect timeout (connect_timeout_ms = 1000).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

fn block(len: usize, seed: u8) -> Bytes {
    Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<_>>())
}

fn addr(node: &Node) -> ServerAddr {
    node.data.to_string().parse().expect("server address")
}

/// Keys `prefix-0..` until `want` of them are owned by `owner`.
fn keys_owned_by(client: &memkv::Client, owner: &ServerAddr, prefix: &str, want: usize) -> Vec<String> {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| &client.owner_of(k.as_bytes()).unwrap() == owner)
        .take(want)
        .collect()
}

fn status_u64(node: &Node, field: &str) -> u64 {
    let s = node.status();
    s[field].as_u64().unwrap_or_else(|| panic!("{field} in {s}"))
}

#[test]
fn a_killed_nodes_reads_become_misses_and_writes_errors_within_a_second() {
    let creds = Creds::new();
    let mut nodes: Vec<Node> =
        ["127.0.2.1", "127.0.2.2", "127.0.2.3"].iter().map(|ip| Node::start(&creds, ip, &[])).collect();
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[]);
    let victim = addr(&nodes[1]);
    let dead_keys = keys_owned_by(&client, &victim, "k", 5);
    let live_keys: Vec<String> =
        [&nodes[0], &nodes[2]].iter().flat_map(|n| keys_owned_by(&client, &addr(n), "k", 5)).collect();
    let rt = runtime();
    rt.block_on(async {
        for k in dead_keys.iter().chain(&live_keys) {
            client.put(k.as_bytes(), block(4096, k.len() as u8)).await.unwrap();
        }
    });
    nodes[1].kill();
    rt.block_on(async {
        let t = Instant::now();
        let read = client.get(dead_keys[0].as_bytes()).await;
        let took = t.elapsed();
        assert!(matches!(read, Ok(None)), "read of a dead node's key: {read:?}");
        assert!(took < Duration::from_secs(1), "read took {took:?}");

        let t = Instant::now();
        let e = client.put(dead_keys[1].as_bytes(), block(10, 1)).await.expect_err("write to a dead node");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "write took {took:?}");
        assert!(e.to_string().contains(&victim.to_string()), "error names the node: {e}");
        assert!(e.is_unavailable(), "{e:?}");
        // The node stays listed while the client waits to retry it.
        let mut listed = client.unavailable_servers().contains(&victim);
        for _ in 0..10 {
            if listed {
                break;
            }
            let _ = client.put(dead_keys[1].as_bytes(), block(10, 1)).await;
            listed = client.unavailable_servers().contains(&victim);
        }
        assert!(listed, "unavailable_servers {:?}", client.unavailable_servers());
        assert!(client.unavailable_servers().iter().all(|s| s == &victim));

        // Every path turns the dead node's keys into misses and keeps serving the others.
        let t = Instant::now();
        for k in &dead_keys {
            assert_eq!(client.get(k.as_bytes()).await.unwrap(), None, "{k}");
        }
        for k in &live_keys {
            assert_eq!(client.get(k.as_bytes()).await.unwrap(), Some(block(4096, k.len() as u8)), "{k}");
            client.put(k.as_bytes(), block(100, 7)).await.unwrap();
            assert_eq!(client.get(k.as_bytes()).await.unwrap(), Some(block(100, 7)), "{k}");
        }
        let all: Vec<&String> = dead_keys.iter().chain(&live_keys).collect();
        let sizes = client.exists(&all).await.unwrap();
        assert_eq!(&sizes[..5], &[None; 5], "exists on the dead node");
        assert!(sizes[5..].iter().all(|s| *s == Some(100)), "exists on live nodes: {sizes:?}");
        let got =
            client.get_batch(&all.iter().map(|k| GetItem::whole(k.as_bytes())).collect::<Vec<_>>()).await.unwrap();
        assert!(
            got[..5].iter().all(Option::is_none) && got[5..].iter().all(|g| g.as_deref() == Some(&block(100, 7)[..]))
        );
        let batch: Vec<PutItem> = all.iter().map(|k| PutItem::whole(k.as_bytes(), block(8, 1))).collect();
        let e = client.put_batch(&batch).await.expect_err("batch touching the dead node");
        assert!(e.to_string().contains(&victim.to_string()), "{e}");
        assert!(client.delete(dead_keys[0].as_bytes()).await.is_err(), "delete on a dead node fails");
        assert!(t.elapsed() < Duration::from_secs(3), "all of it took {:?}", t.elapsed());
    });
}

#[test]
fn a_node_restarted_on_the_same_address_is_used_again_without_client_action() {
    let creds = Creds::new();
    let ip = "127.0.2.4";
    let mut node = Node::start(&creds, ip, &[]);
    let other = Node::start(&creds, "127.0.2.5", &[]);
    let client = creds.client(&[&node, &other], &[]);
    let keys = keys_owned_by(&client, &addr(&node), "r", 3);
    let port = node.data.port();
    let rt = runtime();
    rt.block_on(async {
        client.put(keys[0].as_bytes(), block(1000, 1)).await.unwrap();
    });
    node.kill();
    rt.block_on(async {
        // A few failures grow the backoff (it caps at 5 s).
        for _ in 0..3 {
            assert!(client.put(keys[1].as_bytes(), block(10, 2)).await.is_err());
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    });
    let node = Node::start_on(&creds, ip, &port.to_string(), &[]);
    assert_eq!(node.data.port(), port);
    let restarted = Instant::now();
    let recovered = rt.block_on(async {
        let deadline = restarted + Duration::from_secs(8);
        loop {
            match client.put(keys[1].as_bytes(), block(2000, 3)).await {
                Ok(()) => return restarted.elapsed(),
                Err(e) if Instant::now() < deadline => {
                    assert!(e.is_unavailable(), "{e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no recovery within 8 s: {e}"),
            }
        }
    });
    assert!(recovered < Duration::from_secs(6), "recovered after {recovered:?}");
    rt.block_on(async {
        assert_eq!(client.get(keys[1].as_bytes()).await.unwrap(), Some(block(2000, 3)));
        assert_eq!(client.get(keys[0].as_bytes()).await.unwrap(), None, "memory did not survive the crash");
        client.put(keys[2].as_bytes(), block(5, 4)).await.unwrap();
        assert_eq!(client.get(keys[2].as_bytes()).await.unwrap(), Some(block(5, 4)));
    });
    assert!(client.unavailable_servers().is_empty(), "{:?}", client.unavailable_servers());
    assert_eq!(status_u64(&node, "objects"), 2);
}

#[test]
fn a_server_with_nothing_listening_fails_fast_instead_of_hanging() {
    let creds = Creds::new();
    let client = memkv::Client::new(creds.client_config(&[], &[("servers", "127.0.2.99:9")])).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let t = Instant::now();
        let e = client.put(b"k", block(10, 0)).await.expect_err("nothing listens there");
        let took = t.elapsed();
        assert!(took < CONNECT_TIMEOUT, "first op took {took:?}");
        assert!(e.to_string().contains("127.0.2.99:9"), "{e}");
        assert!(e.is_unavailable(), "{e:?}");
        let t = Instant::now();
        assert_eq!(client.get(b"k").await.unwrap(), None);
        assert_eq!(client.exists(&[b"k"]).await.unwrap(), vec![None]);
        assert!(t.elapsed() < CONNECT_TIMEOUT, "reads took {:?}", t.elapsed());
    });
}

#[test]
fn a_peer_that_never_answers_the_handshake_fails_within_the_connect_timeout() {
    let creds = Creds::new();
    // The kernel completes the TCP handshake from the backlog; nothing ever reads or answers.
    let silent = TcpListener::bind("127.0.2.98:0").unwrap();
    let target = silent.local_addr().unwrap().to_string();
    let client = memkv::Client::new(creds.client_config(&[], &[("servers", &target)])).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let t = Instant::now();
        let e = client.put(b"k", block(10, 0)).await.expect_err("the peer never answers");
        let took = t.elapsed();
        assert!(took >= CONNECT_TIMEOUT - Duration::from_millis(50), "gave up early: {took:?}: {e}");
        assert!(took < CONNECT_TIMEOUT + Duration::from_millis(1500), "took {took:?}");
        assert!(e.to_string().contains(&target) && e.to_string().contains("timed out"), "{e}");
        let t = Instant::now();
        assert_eq!(client.get(b"k").await.unwrap(), None);
        assert!(t.elapsed() < CONNECT_TIMEOUT + Duration::from_millis(1500), "read took {:?}", t.elapsed());
    });
    drop(silent);
}

#[test]
fn sigterm_lets_requests_in_flight_finish_or_fail_cleanly_then_exits_zero_and_frees_the_port() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.2.7", &[]);
    // One connection: everything below is pipelined on it.
    let client = creds.client(&[&node], &[("num_connections", "1")]);
    let rt = runtime();
    rt.block_on(client.put(b"warm-up", block(10, 0))).unwrap();
    let tasks: Vec<_> = (0..100u8)
        .map(|i| {
            let client = client.clone();
            rt.spawn(async move { client.put(format!("inflight-{i}").as_bytes(), block(256 << 10, i)).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_u64(&node, "bytes_received") <= 10 {
        assert!(Instant::now() < deadline, "no request arrived within 5 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let exit = node.terminate();
    assert!(exit.success(), "exit status {exit:?}");
    let results = rt.block_on(async {
        let all = futures_util::future::join_all(tasks);
        tokio::time::timeout(Duration::from_secs(8), all).await.expect("in-flight requests hung")
    });
    // Each request either completed or failed with a connection-level error: no hang, no
    // garbled answer. (Which of the two is not asserted: the node closes with client bytes
    // still unread, so replies it had queued can be lost to the reset.)
    for r in results {
        if let Err(e) = r.expect("task") {
            assert!(e.is_unavailable(), "a clean failure, not {e:?}");
        }
    }
    // The ports are free again.
    TcpListener::bind(node.data).expect("data port free after exit");
    TcpListener::bind(node.admin).expect("admin port free after exit");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("memkv-server stopped")) && Instant::now() < deadline {
        log.extend(node.stderr.recv_timeout(Duration::from_millis(100)));
    }
    assert!(log.iter().any(|l| l.contains("memkv-server stopped")), "log: {log:#?}");
}

#[test]
fn admin_endpoints_report_health_readiness_status_and_metrics_without_secrets() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.2.8", &[]);
    // TCP: the PUT is one `put` request (over shared memory it is a RESERVE and a COMMIT).
    let client = creds.client(&[&node], &[("transport", "tcp")]);
    let rt = runtime();
    rt.block_on(async {
        client.put(b"one", block(1000, 1)).await.unwrap();
        assert!(client.get(b"one").await.unwrap().is_some());
        assert!(client.get(b"two").await.unwrap().is_none());
    });
    let token = std::fs::read_to_string(&creds.license_path).unwrap().trim().to_string();
    let secrets = [creds.auth_key.to_lowercase(), creds.auth_key.to_uppercase(), token.clone()];
    let no_secrets = |path: &str, body: &str| {
        for s in &secrets {
            assert!(!body.contains(s.as_str()), "{path} leaks a secret");
        }
    };

    let (code, body) = node.admin_get("/v1/health");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(health["status"], "ok", "{body}");
    no_secrets("/v1/health", &body);

    let (code, body) = node.admin_get("/v1/ready");
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["ready"], true, "{body}");

    let (code, body) = node.admin_get("/v1/status");
    assert_eq!(code, 200, "{body}");
    no_secrets("/v1/status", &body);
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    for f in [
        "uptime_secs",
        "capacity_bytes",
        "used_bytes",
        "objects",
        "hits",
        "misses",
        "evictions",
        "connections",
        "auth_failures",
    ] {
        assert!(s[f].is_u64(), "{f} missing or not a count in {s}");
    }
    assert!(s["node_id"].is_string() && s["version"].is_string(), "{s}");
    assert_eq!((s["objects"].as_u64(), s["hits"].as_u64(), s["misses"].as_u64()), (Some(1), Some(1), Some(1)), "{s}");
    assert_eq!(s["capacity_bytes"], 256u64 << 20);
    assert!(s["used_bytes"].as_u64().unwrap() >= 1000);
    let license = s["license"].as_str().expect("license summary");
    assert!(license.contains("memkv-tests"), "summary names the licensee: {license}");
    assert_eq!(health["node_id"], s["node_id"]);
    let info = rt.block_on(client.node_info(&addr(&node))).unwrap();
    assert_eq!(info["node_id"], s["node_id"], "NODE_INFO is the status document");
    no_secrets("NODE_INFO", &info.to_string());

    let (code, body) = node.admin_get("/v1/metrics");
    assert_eq!(code, 200);
    no_secrets("/v1/metrics", &body);
    let lines: Vec<&str> = body.lines().collect();
    assert!(lines.contains(&"memkv_objects 1"), "{body}");
    assert!(lines.contains(&"memkv_requests_total{op=\"put\"} 1"), "{body}");
    assert!(lines.contains(&"# TYPE memkv_objects gauge"), "{body}");
    for l in lines.iter().filter(|l| !l.starts_with('#')) {
        let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample {l:?}"));
        assert!(name.starts_with("memkv_"), "{l}");
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {l:?}"));
    }
    assert_eq!(node.admin_get("/v1/nope").0, 404);
}

#[test]
fn a_client_with_another_cluster_key_is_refused_and_counted_while_the_right_one_keeps_working() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.2.9", &[]);
    let good = creds.client(&[&node], &[]);
    let wrong_key = memkv::auth::AuthKey::generate().unwrap().to_hex();
    let bad = creds.client(&[&node], &[("auth_key", &wrong_key)]);
    assert_eq!(status_u64(&node, "auth_failures"), 0);
    let rt = runtime();
    let errors = rt.block_on(async {
        let good_work = async {
            for i in 0..100u8 {
                let key = format!("good-{i}");
                good.put(key.as_bytes(), block(4096, i)).await.unwrap();
                assert_eq!(good.get(key.as_bytes()).await.unwrap(), Some(block(4096, i)), "{key}");
            }
        };
        let bad_work = async {
            let mut errors = Vec::new();
            for i in 0..3 {
                errors.push(bad.put(format!("bad-{i}").as_bytes(), block(10, 0)).await.expect_err("wrong key"));
                // Past the client's reconnect backoff, so each attempt reaches the node.
                tokio::time::sleep(Duration::from_millis(150 << i)).await;
            }
            errors
        };
        tokio::join!(good_work, bad_work).1
    });
    for e in &errors {
        let m = e.to_string();
        assert!(m.contains("MEMKV_AUTH_KEY") && m.contains(&node.data.to_string()), "{m}");
        assert!(!m.contains(&wrong_key) && !m.contains(&creds.auth_key), "the error must not echo a key: {m}");
    }
    assert!(matches!(errors[0], ClientError::Refused { status: memkv::wire::Status::BadMac, .. }), "{:?}", errors[0]);
    let s = node.status();
    let failures = s["auth_failures"].as_u64().unwrap();
    assert!((1..=3).contains(&failures), "{s}");
    assert_eq!(s["auth_failures_by_reason"]["bad_mac"], failures, "{s}");
    assert_eq!(s["objects"], 100, "only the right key stored anything: {s}");
    rt.block_on(async {
        let read = bad.get(b"good-1").await;
        assert!(matches!(read, Err(ClientError::Refused { .. })), "a wrong key is an error, not a miss: {read:?}");
        assert_eq!(good.get(b"good-1").await.unwrap(), Some(block(4096, 1)));
    });
}

#[test]
fn one_broken_connection_with_many_requests_in_flight_counts_as_one_failure() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.2.11", &[]);
    let client = creds.client(&[&node], &[("num_connections", "1")]);
    let rt = runtime();
    rt.block_on(client.put(b"k", block(100, 1))).unwrap();
    // Freeze the node so that the reads below are certainly in flight when it dies.
    node.freeze();
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            rt.spawn(async move { client.get(b"k").await })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    node.kill();
    let results = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(8), futures_util::future::join_all(reads)).await.expect("reads hung")
    });
    for r in results {
        let r = r.expect("task");
        assert!(matches!(r, Ok(None)), "a read on a dead node is a miss: {r:?}");
    }
    // One dead connection is one failure: the next retry is one backoff step away, not five.
    let retry_in_ms = rt.block_on(async {
        for _ in 0..3 {
            if let Err(ClientError::Unavailable { retry_in_ms, .. }) = client.put(b"k", block(10, 2)).await {
                return retry_in_ms;
            }
        }
        panic!("the node was never reported unavailable");
    });
    assert!(retry_in_ms <= 400, "backoff after one broken connection: {retry_in_ms} ms");
}

#[test]
fn a_client_used_again_from_a_new_runtime_reconnects_by_itself() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.2.10", &[]);
    let client = creds.client(&[&node], &[("num_connections", "1")]);
    let first = runtime();
    first.block_on(client.put(b"k", block(100, 1))).unwrap();
    drop(first);
    let second = runtime();
    second.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match client.put(b"k2", block(100, 2)).await {
                Ok(()) => break,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("still failing after 3 s: {e}"),
            }
        }
        assert_eq!(client.get(b"k").await.unwrap(), Some(block(100, 1)));
    });
}
