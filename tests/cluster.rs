//! A three-node cluster of real `memkv-server` processes, each on its own 127.0.1.x address:
//! placement, round trips of every size class, batches, ranged writes, namespaces, eviction,
//! object limits and concurrency. Every test starts its own nodes on addresses no other test
//! uses, so the tests run in parallel.
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Creds, Node, pattern, runtime};
use memkv::client::{ClientError, GetItem, PutItem};
use memkv::config::ServerAddr;
use memkv::wire::Status;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Three nodes on `ips`, started in parallel.
fn cluster(creds: &Creds, ips: [&str; 3]) -> Vec<Node> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ips.iter().map(|ip| s.spawn(move || Node::start(creds, ip, &[]))).collect();
        handles.into_iter().map(|h| h.join().expect("node start")).collect()
    })
}

/// Index of the node behind `addr`.
fn node_index(nodes: &[Node], addr: &ServerAddr) -> usize {
    nodes
        .iter()
        .position(|n| n.data.to_string() == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} is not one of the nodes"))
}

fn objects(node: &Node) -> u64 {
    node.status()["objects"].as_u64().expect("objects")
}

/// One sample of the node's Prometheus text, e.g. `memkv_requests_total{op="exists"}`.
fn metric(node: &Node, sample: &str) -> f64 {
    let (code, body) = node.admin_get("/v1/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
        .trim()
        .parse()
        .expect("sample value")
}

fn server_status(e: &ClientError) -> Option<Status> {
    match e {
        ClientError::Server { status, .. } => Some(*status),
        _ => None,
    }
}

#[test]
fn whole_objects_from_1_byte_to_16_mib_round_trip_byte_exact() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.1", "127.0.1.2", "127.0.1.3"]);
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[]);
    let sizes = [1, 4 * KIB, 2 * MIB, 16 * MIB];
    runtime().block_on(async {
        for (i, &size) in sizes.iter().enumerate() {
            let key = format!("size-{size}");
            let value = pattern(size, i as u64 + 1);
            assert_eq!(client.exists(&[key.as_bytes()]).await.unwrap(), vec![None], "{key} before the put");
            client.put(key.as_bytes(), value.clone()).await.unwrap();
            let back = client.get(key.as_bytes()).await.unwrap().expect("stored object");
            assert_eq!(back.len(), size, "{key}");
            assert!(back == value, "{key}: bytes differ");
            assert_eq!(client.exists(&[key.as_bytes()]).await.unwrap(), vec![Some(size as u64)], "{key}");
        }
        let total: u64 = nodes.iter().map(objects).sum();
        assert_eq!(total, sizes.len() as u64);
        for &size in &sizes {
            let key = format!("size-{size}");
            assert!(client.delete(key.as_bytes()).await.unwrap(), "{key} deleted");
            assert_eq!(client.get(key.as_bytes()).await.unwrap(), None, "{key} after delete");
            assert_eq!(client.exists(&[key.as_bytes()]).await.unwrap(), vec![None], "{key} after delete");
            assert!(!client.delete(key.as_bytes()).await.unwrap(), "{key}: second delete finds nothing");
        }
    });
    for n in &nodes {
        let s = n.status();
        assert_eq!((s["objects"].as_u64(), s["used_bytes"].as_u64()), (Some(0), Some(0)), "{s}");
    }
}

#[test]
fn keys_spread_over_all_three_nodes_exactly_where_owner_of_says() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.4", "127.0.1.5", "127.0.1.6"]);
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[]);
    let keys: Vec<String> = (0..300).map(|i| format!("spread-{i}")).collect();
    let mut expected = [0u64; 3];
    for k in &keys {
        expected[node_index(&nodes, &client.owner_of(k.as_bytes()).unwrap())] += 1;
    }
    // One runtime for the whole test: the client's sessions live on it.
    let rt = runtime();
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            client.put(k.as_bytes(), pattern(100, i as u64)).await.unwrap();
        }
    });
    let counts: Vec<u64> = nodes.iter().map(objects).collect();
    assert_eq!(counts, expected, "objects per node vs owner_of");
    assert!(counts.iter().all(|&c| c > 0), "every node holds keys: {counts:?}");
    // Deleting through the client removes the object from its owner only.
    rt.block_on(async {
        for k in keys.iter().take(30) {
            let owner = node_index(&nodes, &client.owner_of(k.as_bytes()).unwrap());
            let before: Vec<u64> = nodes.iter().map(objects).collect();
            assert!(client.delete(k.as_bytes()).await.unwrap(), "{k}");
            let after: Vec<u64> = nodes.iter().map(objects).collect();
            for i in 0..3 {
                let want = if i == owner { before[i] - 1 } else { before[i] };
                assert_eq!(after[i], want, "{k}: node {i} (owner {owner})");
            }
        }
    });
}

#[test]
fn an_independent_client_with_the_same_servers_reads_what_another_wrote() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.7", "127.0.1.8", "127.0.1.9"]);
    let writer = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[]);
    let reader = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[("num_connections", "1")]);
    // Placement depends on the addresses only, not on the order they are listed in.
    let reversed = creds.client(&[&nodes[2], &nodes[1], &nodes[0]], &[]);
    runtime().block_on(async {
        for i in 0..60u64 {
            writer.put(format!("shared-{i}").as_bytes(), pattern(1000 + i as usize, i)).await.unwrap();
        }
        for i in 0..60u64 {
            let key = format!("shared-{i}");
            assert_eq!(reader.owner_of(key.as_bytes()).unwrap(), writer.owner_of(key.as_bytes()).unwrap());
            let want = Some(pattern(1000 + i as usize, i));
            assert_eq!(reader.get(key.as_bytes()).await.unwrap(), want, "{key} via a second client");
            assert_eq!(reversed.get(key.as_bytes()).await.unwrap(), want, "{key} via a reversed server list");
        }
    });
}

#[test]
fn exists_of_500_keys_answers_the_present_ones_with_one_request_per_node() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.10", "127.0.1.11", "127.0.1.12"]);
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[]);
    let keys: Vec<String> = (0..500).map(|i| format!("ex-{i}")).collect();
    let size = |i: usize| (i % 97 + 1) * 10;
    let items: Vec<PutItem> =
        (0..500).step_by(2).map(|i| PutItem::whole(keys[i].as_bytes(), pattern(size(i), i as u64))).collect();
    let exists_req = r#"memkv_requests_total{op="exists"}"#;
    let rt = runtime();
    rt.block_on(client.put_batch(&items)).unwrap();
    let before: Vec<(f64, serde_json::Value)> = nodes.iter().map(|n| (metric(n, exists_req), n.status())).collect();
    let answer = rt.block_on(client.exists(&keys)).unwrap();
    assert_eq!(answer.len(), 500);
    for (i, a) in answer.iter().enumerate() {
        let want = (i % 2 == 0).then(|| size(i) as u64);
        assert_eq!(*a, want, "{}", keys[i]);
    }
    for (n, (exists_before, status_before)) in nodes.iter().zip(before) {
        assert_eq!(metric(n, exists_req) - exists_before, 1.0, "one EXISTS request on {}", n.data);
        let s = n.status();
        assert_eq!(s["hits"], status_before["hits"], "EXISTS is not a GET hit on {}", n.data);
        assert_eq!(s["misses"], status_before["misses"], "EXISTS is not a GET miss on {}", n.data);
    }
}

#[test]
fn put_batch_and_get_batch_span_nodes_with_mixed_sizes_absent_keys_and_ranges() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.13", "127.0.1.14", "127.0.1.15"]);
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[]);
    let sizes = [1, 17, 4 * KIB, 64 * KIB + 3, MIB, 3 * MIB];
    let objs: Vec<(String, Bytes)> =
        (0..48).map(|i| (format!("batch-{i}"), pattern(sizes[i % sizes.len()], 1000 + i as u64))).collect();
    // Ranged parts of one more object ride in the same batch.
    let ranged = pattern(10_000, 77);
    let mut items: Vec<PutItem> = objs.iter().map(|(k, v)| PutItem::whole(k.as_bytes(), v.clone())).collect();
    for (off, end) in [(6000, 10_000), (0, 2500), (2500, 6000)] {
        items.push(PutItem {
            key: b"batch-ranged".to_vec(),
            offset: off,
            total: 10_000,
            data: ranged.slice(off as usize..end),
        });
    }
    let rt = runtime();
    rt.block_on(client.put_batch(&items)).unwrap();
    let used: Vec<usize> =
        (0..48).map(|i| node_index(&nodes, &client.owner_of(objs[i].0.as_bytes()).unwrap())).collect();
    assert!((0..3).all(|n| used.contains(&n)), "the batch reached every node: {used:?}");
    let total: u64 = nodes.iter().map(objects).sum();
    assert_eq!(total, 49);

    let mut gets: Vec<GetItem> = Vec::new();
    let mut want: Vec<Option<Bytes>> = Vec::new();
    for (i, (k, v)) in objs.iter().enumerate() {
        gets.push(GetItem::whole(k.as_bytes()));
        want.push(Some(v.clone()));
        gets.push(GetItem::whole(format!("absent-{i}").as_bytes()));
        want.push(None);
        if v.len() > 10 {
            let (off, len) = (v.len() / 3, v.len() / 4);
            gets.push(GetItem { key: k.as_bytes().to_vec(), offset: off as u64, length: len as u64 });
            want.push(Some(v.slice(off..off + len)));
            // length 0 means "to the end".
            gets.push(GetItem { key: k.as_bytes().to_vec(), offset: off as u64, length: 0 });
            want.push(Some(v.slice(off..)));
        }
    }
    gets.push(GetItem::whole(b"batch-ranged".to_vec()));
    want.push(Some(ranged.clone()));
    gets.push(GetItem { key: b"batch-ranged".to_vec(), offset: 2400, length: 200 });
    want.push(Some(ranged.slice(2400..2600)));
    let got = rt.block_on(client.get_batch(&gets)).unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "entry {i} ({:?} @{} +{}): got {:?} bytes, want {:?}",
            String::from_utf8_lossy(&gets[i].key),
            gets[i].offset,
            gets[i].length,
            g.as_ref().map(Bytes::len),
            w.as_ref().map(Bytes::len)
        );
    }
}

#[test]
fn a_get_batch_over_the_64_mib_answer_budget_still_returns_every_object() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.1.36", &[]);
    let client = creds.client(&[&node], &[]);
    let objs: Vec<Bytes> = (0..5).map(|i| pattern(16 * MIB, 500 + i)).collect();
    runtime().block_on(async {
        for (i, v) in objs.iter().enumerate() {
            client.put(format!("big-{i}").as_bytes(), v.clone()).await.unwrap();
        }
        let items: Vec<GetItem> = (0..5).map(|i| GetItem::whole(format!("big-{i}").as_bytes())).collect();
        let got = client.get_batch(&items).await.unwrap();
        for (i, (g, v)) in got.iter().zip(&objs).enumerate() {
            assert!(g.as_ref() == Some(v), "big-{i}: {:?} bytes", g.as_ref().map(Bytes::len));
        }
    });
}

#[test]
fn a_large_get_batch_is_striped_over_the_connections_within_the_answer_budget_never_as_single_gets() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.1.37", &[]);
    // Over TCP, where a GET_BATCH answer carries the bytes (shared memory answers addresses).
    let client = |conns: &str| creds.client(&[&node], &[("transport", "tcp"), ("num_connections", conns)]);
    let (one, four) = (client("1"), client("4"));
    let (gets, batches) = (r#"memkv_requests_total{op="get"}"#, r#"memkv_requests_total{op="get_batch"}"#);
    let sent = |f: &dyn Fn()| {
        let before = (metric(&node, gets), metric(&node, batches));
        f();
        (metric(&node, gets) - before.0, metric(&node, batches) - before.1)
    };
    let rt = runtime();
    let check = |client: &memkv::Client, objs: &[Bytes], prefix: &str| {
        // Ranges whose lengths are known (a NIXL READ's shape).
        let items: Vec<GetItem> = (0..objs.len())
            .map(|i| GetItem { key: format!("{prefix}-{i}").into_bytes(), offset: 0, length: objs[i].len() as u64 })
            .collect();
        let got = rt.block_on(client.get_batch(&items)).unwrap();
        for (i, (g, v)) in got.iter().zip(objs).enumerate() {
            assert!(g.as_ref() == Some(v), "{prefix}-{i}: {:?} bytes", g.as_ref().map(Bytes::len));
        }
    };
    let put = |objs: &[Bytes], prefix: &str| {
        for (i, v) in objs.iter().enumerate() {
            rt.block_on(one.put(format!("{prefix}-{i}").as_bytes(), v.clone())).unwrap();
        }
    };

    // 80 MiB on one connection: a batch of 4 and a batch of 1, each within the node's 64 MiB
    // answer budget; none past it, fetched on its own.
    let big: Vec<Bytes> = (0..5).map(|i| pattern(16 * MIB, 600 + i)).collect();
    put(&big, "big");
    assert_eq!(sent(&|| check(&one, &big, "big")), (0.0, 2.0), "(GETs, GET_BATCHes), 80 MiB over 1 connection");
    // 16 MiB over 4 connections: 4 batches of 4 MiB, one per connection.
    let mid: Vec<Bytes> = (0..16).map(|i| pattern(MIB, 700 + i)).collect();
    put(&mid, "mid");
    assert_eq!(sent(&|| check(&four, &mid, "mid")), (0.0, 4.0), "16 MiB over 4 connections");
    // Below the 4 MiB stripe a batch stays whole.
    assert_eq!(sent(&|| check(&four, &mid[..3], "mid")), (0.0, 1.0), "3 MiB over 4 connections");
}

#[test]
fn a_ranged_put_is_invisible_until_its_last_part_arrives_then_byte_exact() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.16", "127.0.1.17", "127.0.1.18"]);
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[]);
    let total = 300_000usize;
    let value = pattern(total, 5);
    let bounds = [0, 1000, 150_000, 150_001, total];
    // Out of order: part 2, 0, 3, then 1.
    let order = [2usize, 0, 3, 1];
    runtime().block_on(async {
        for (n, &p) in order.iter().enumerate() {
            let (off, end) = (bounds[p], bounds[p + 1]);
            client.put_range(b"ranged", off as u64, total as u64, value.slice(off..end)).await.unwrap();
            if n + 1 < order.len() {
                assert_eq!(client.get(b"ranged").await.unwrap(), None, "visible after {} of 4 parts", n + 1);
                assert_eq!(client.exists(&[b"ranged"]).await.unwrap(), vec![None]);
            }
        }
        let back = client.get(b"ranged").await.unwrap().expect("complete object");
        assert!(back == value, "assembled bytes differ");
        assert_eq!(client.exists(&[b"ranged"]).await.unwrap(), vec![Some(total as u64)]);
        let mid = client.get_range(b"ranged", 999, 150_003).await.unwrap().expect("middle slice");
        assert!(mid == value.slice(999..151_002), "middle slice differs");
        let tail = client.get_range(b"ranged", 299_990, 0).await.unwrap().expect("tail");
        assert!(tail == value.slice(299_990..), "tail differs");
    });
    let owner = node_index(&nodes, &client.owner_of(b"ranged").unwrap());
    assert_eq!(objects(&nodes[owner]), 1);
}

#[test]
fn get_range_outside_an_object_is_an_invalid_request_and_the_node_keeps_serving() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.19", "127.0.1.20", "127.0.1.21"]);
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[("num_connections", "1")]);
    let value = pattern(4096, 9);
    let owner = node_index(&nodes, &client.owner_of(b"obj").unwrap());
    let rt = runtime();
    rt.block_on(async {
        client.put(b"obj", value.clone()).await.unwrap();
        for (off, len) in [(4097u64, 0u64), (4000, 97), (0, 4097), (u64::MAX, 2)] {
            let e = client.get_range(b"obj", off, len).await.expect_err("range outside the object");
            assert_eq!(server_status(&e), Some(Status::InvalidRequest), "{off}+{len}: {e}");
            assert!(e.to_string().contains(&nodes[owner].data.to_string()), "names the node: {e}");
            // The same connection goes on serving.
            assert_eq!(client.get(b"obj").await.unwrap(), Some(value.clone()));
        }
        assert_eq!(client.get_range(b"obj", 4000, 96).await.unwrap(), Some(value.slice(4000..4096)));
    });
    let s = nodes[owner].status();
    assert_eq!(s["connections_total"], 1, "no reconnect after the refused ranges: {s}");
    assert_eq!(s["connections"], 1, "{s}");
}

#[test]
fn clients_in_different_namespaces_do_not_see_each_others_keys() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.22", "127.0.1.23", "127.0.1.24"]);
    let all = [&nodes[0], &nodes[1], &nodes[2]];
    let a = creds.client(&all, &[("namespace", "a")]);
    let b = creds.client(&all, &[("namespace", "b")]);
    runtime().block_on(async {
        for i in 0..20u64 {
            let key = format!("k{i}");
            a.put(key.as_bytes(), pattern(100, i)).await.unwrap();
            assert_eq!(b.get(key.as_bytes()).await.unwrap(), None, "{key} leaked into b");
            b.put(key.as_bytes(), pattern(200, i + 100)).await.unwrap();
        }
        a.put(b"only-a", pattern(10, 1)).await.unwrap();
        for i in 0..20u64 {
            let key = format!("k{i}");
            assert_eq!(a.get(key.as_bytes()).await.unwrap(), Some(pattern(100, i)), "{key} in a");
            assert_eq!(b.get(key.as_bytes()).await.unwrap(), Some(pattern(200, i + 100)), "{key} in b");
        }
        assert_eq!(b.exists(&[b"only-a".as_slice(), b"k0"]).await.unwrap(), vec![None, Some(200)]);
        assert!(!b.delete(b"only-a").await.unwrap(), "b cannot delete a's key");
        assert_eq!(a.get(b"only-a").await.unwrap(), Some(pattern(10, 1)));
        let got = b.get_batch(&[GetItem::whole(b"only-a".to_vec()), GetItem::whole(b"k1".to_vec())]).await.unwrap();
        assert_eq!(got, vec![None, Some(pattern(200, 101))]);
    });
    let total: u64 = nodes.iter().map(objects).sum();
    assert_eq!(total, 41);
}

#[test]
fn the_last_complete_write_of_a_key_wins() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.25", "127.0.1.26", "127.0.1.27"]);
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[]);
    let owner = node_index(&nodes, &client.owner_of(b"lww").unwrap());
    runtime().block_on(async {
        client.put(b"lww", pattern(MIB, 1)).await.unwrap();
        client.put(b"lww", pattern(100, 2)).await.unwrap();
        assert_eq!(client.get(b"lww").await.unwrap(), Some(pattern(100, 2)));
        assert_eq!(client.exists(&[b"lww"]).await.unwrap(), vec![Some(100)]);
        client.put(b"lww", pattern(3 * MIB, 3)).await.unwrap();
        let back = client.get(b"lww").await.unwrap().expect("object");
        assert!(back == pattern(3 * MIB, 3), "the 3 MiB write wins");
    });
    let s = nodes[owner].status();
    assert_eq!(s["objects"], 1, "{s}");
    // The replaced versions gave their memory back.
    let used = s["used_bytes"].as_u64().unwrap();
    assert!((3 * MIB as u64..3 * MIB as u64 + 4096).contains(&used), "used_bytes {used}");
}

#[test]
fn a_full_node_evicts_its_oldest_objects_and_keeps_serving_the_newest() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.1.28", &["--memory", "8MiB"]);
    let client = creds.client(&[&node], &[]);
    let key = |i: usize| format!("evict-{i}");
    runtime().block_on(async {
        for i in 0..40 {
            client.put(key(i).as_bytes(), pattern(MIB, i as u64)).await.unwrap();
        }
        for i in 36..40 {
            assert_eq!(client.get(key(i).as_bytes()).await.unwrap(), Some(pattern(MIB, i as u64)), "newest {i}");
        }
        for i in 0..30 {
            assert_eq!(client.get(key(i).as_bytes()).await.unwrap(), None, "oldest {i} evicted");
        }
    });
    let s = node.status();
    let n = |f: &str| s[f].as_u64().unwrap_or_else(|| panic!("{f} in {s}"));
    assert_eq!(n("capacity_bytes"), 8 * MIB as u64, "{s}");
    assert!(n("evictions") > 0, "{s}");
    assert!(n("used_bytes") <= n("capacity_bytes"), "{s}");
    assert_eq!(n("evictions") + n("objects"), 40, "every object is either kept or evicted: {s}");
    assert_eq!(node.admin_get("/v1/health").0, 200);
}

#[test]
fn a_get_protects_an_object_from_eviction_but_exists_does_not() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.1.34", &["--memory", "8MiB"]);
    let client = creds.client(&[&node], &[]);
    let key = |i: usize| format!("lru-{i}");
    runtime().block_on(async {
        for i in 0..8 {
            client.put(key(i).as_bytes(), pattern(MIB, i as u64)).await.unwrap();
        }
        assert_eq!(node.status()["evictions"], 0, "eight 1 MiB objects fill 8 MiB exactly");
        // lru-0 is the oldest but was just read; lru-1 was only looked at.
        assert!(client.get(key(0).as_bytes()).await.unwrap().is_some());
        assert_eq!(client.exists(&[key(1)]).await.unwrap(), vec![Some(MIB as u64)]);
        client.put(b"lru-new", pattern(MIB, 99)).await.unwrap();
        assert_eq!(client.get(key(1).as_bytes()).await.unwrap(), None, "EXISTS did not promote lru-1");
        assert_eq!(client.get(key(0).as_bytes()).await.unwrap(), Some(pattern(MIB, 0)), "GET promoted lru-0");
        assert_eq!(client.get(b"lru-new").await.unwrap(), Some(pattern(MIB, 99)));
    });
    let s = node.status();
    assert_eq!((s["evictions"].as_u64(), s["objects"].as_u64()), (Some(1), Some(8)), "{s}");
}

#[test]
fn an_incomplete_ranged_put_expires_after_the_partial_timeout_and_frees_its_memory() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.1.35", &["--partial-timeout-ms", "300"]);
    let client = creds.client(&[&node], &[]);
    let value = pattern(2 * MIB, 8);
    let rt = runtime();
    rt.block_on(client.put_range(b"half", 0, 2 * MIB as u64, value.slice(..MIB))).unwrap();
    assert!(node.status()["used_bytes"].as_u64().unwrap() >= 2 * MIB as u64, "the partial object holds its memory");
    let t = Instant::now();
    while node.status()["used_bytes"] != 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "partial object still held: {}", node.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(t.elapsed() >= Duration::from_millis(200), "expired too early: {:?}", t.elapsed());
    assert_eq!(metric(&node, "memkv_partial_expired_total"), 1.0);
    rt.block_on(async {
        // The second half alone starts a new object; the first half is gone for good.
        client.put_range(b"half", MIB as u64, 2 * MIB as u64, value.slice(MIB..)).await.unwrap();
        assert_eq!(client.get(b"half").await.unwrap(), None);
        client.put_range(b"half", 0, 2 * MIB as u64, value.slice(..MIB)).await.unwrap();
        assert!(client.get(b"half").await.unwrap() == Some(value.clone()), "re-sent halves assemble");
    });
    assert_eq!(node.status()["objects"], 1);
}

#[test]
fn an_object_over_max_object_size_is_refused_and_the_connection_keeps_working() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.1.29", &["--max-object-size", "1MiB"]);
    let client = creds.client(&[&node], &[("num_connections", "1")]);
    runtime().block_on(async {
        client.put(b"warm-up", pattern(10, 1)).await.unwrap();
        let e = client.put(b"big", pattern(MIB + 1, 2)).await.expect_err("over the limit");
        assert_eq!(server_status(&e), Some(Status::PayloadTooLarge), "{e}");
        assert!(e.to_string().contains(&node.data.to_string()), "names the node: {e}");
        // A ranged write announcing a too-large total is refused the same way.
        let e = client.put_range(b"big", 0, 2 * MIB as u64, pattern(KIB, 3)).await.expect_err("total over the limit");
        assert_eq!(server_status(&e), Some(Status::PayloadTooLarge), "{e}");
        assert_eq!(client.get(b"big").await.unwrap(), None);
        client.put(b"fits", pattern(MIB, 4)).await.unwrap();
        assert_eq!(client.get(b"fits").await.unwrap(), Some(pattern(MIB, 4)));
        assert_eq!(client.get(b"warm-up").await.unwrap(), Some(pattern(10, 1)));
    });
    let s = node.status();
    assert_eq!(s["connections_total"], 1, "the refusals did not cost the connection: {s}");
    assert_eq!(s["objects"], 2, "{s}");
}

#[test]
fn an_object_over_the_frame_limit_is_refused_as_payload_too_large_without_losing_the_node() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.1.30", &["--max-object-size", "1MiB"]);
    let client = creds.client(&[&node], &[("num_connections", "1")]);
    runtime().block_on(async {
        client.put(b"before", pattern(10, 1)).await.unwrap();
        let e = client.put(b"huge", pattern(65 * MIB, 2)).await.expect_err("over the limit");
        assert_eq!(server_status(&e), Some(Status::PayloadTooLarge), "{e}");
        // The next request must not find the node marked down.
        client.put(b"after", pattern(10, 3)).await.unwrap();
        assert_eq!(client.get(b"before").await.unwrap(), Some(pattern(10, 1)));
    });
}

#[test]
fn eight_tasks_share_one_client_over_four_connections_and_every_block_verifies() {
    let creds = Creds::new();
    let nodes = cluster(&creds, ["127.0.1.31", "127.0.1.32", "127.0.1.33"]);
    let client = creds.client(&[&nodes[0], &nodes[1], &nodes[2]], &[("num_connections", "4")]);
    let started = Instant::now();
    runtime().block_on(async {
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in 0..50u64 {
                        let key = format!("conc-{t}-{i}");
                        let value = pattern(64 * KIB, t * 1000 + i);
                        client.put(key.as_bytes(), value.clone()).await.unwrap();
                        let back = client.get(key.as_bytes()).await.unwrap();
                        assert!(back.as_ref() == Some(&value), "{key}: read back differs");
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t).await.expect("task finished in time").unwrap();
        }
        // Everyone's blocks are still intact after all the interleaving.
        let keys: Vec<String> = (0..8).flat_map(|t| (0..50).map(move |i| format!("conc-{t}-{i}"))).collect();
        let got =
            client.get_batch(&keys.iter().map(|k| GetItem::whole(k.as_bytes())).collect::<Vec<_>>()).await.unwrap();
        for (n, g) in got.iter().enumerate() {
            let (t, i) = (n as u64 / 50, n as u64 % 50);
            assert!(g.as_ref() == Some(&pattern(64 * KIB, t * 1000 + i)), "{}", keys[n]);
        }
    });
    let total: u64 = nodes.iter().map(objects).sum();
    assert_eq!(total, 400, "took {:?}", started.elapsed());
    let per_node: BTreeMap<String, u64> =
        nodes.iter().map(|n| (n.data.to_string(), n.status()["connections_total"].as_u64().unwrap())).collect();
    assert!(per_node.values().all(|&c| c <= 4), "at most 4 connections per node: {per_node:?}");
}
