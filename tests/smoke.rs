//! The shortest end-to-end path: one node, one client, one block there and back.
mod common;

use common::{Creds, Node, runtime};

#[test]
fn a_block_goes_out_and_comes_back_byte_exact() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.1", &[]);
    let client = creds.client(&[&node], &[]);
    runtime().block_on(async {
        let block = bytes::Bytes::from((0..4096u32).map(|i| i as u8).collect::<Vec<_>>());
        client.put(b"k", block.clone()).await.unwrap();
        assert_eq!(client.get(b"k").await.unwrap(), Some(block));
        assert_eq!(client.get(b"absent").await.unwrap(), None);
    });
    assert_eq!(node.status()["objects"], 1);
}

#[test]
fn payload_macs_work_when_asked_for_by_the_client_or_required_by_the_node() {
    let creds = Creds::new();
    let plain_node = Node::start(&creds, "127.0.0.5", &[]);
    let strict_node = Node::start(&creds, "127.0.0.6", &["--require-payload-mac"]);
    let asking = creds.client(&[&plain_node], &[("payload_mac", "true")]);
    let plain = creds.client(&[&strict_node], &[]);
    runtime().block_on(async {
        for (client, name) in [(&asking, "asking client"), (&plain, "plain client on a strict node")] {
            let block = bytes::Bytes::from(vec![0x5au8; 3 << 20]);
            client.put(b"mac", block.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(client.get(b"mac").await.unwrap(), Some(block), "{name}");
            // Frames without payload carry no payload-MAC trailer.
            client.put(b"empty", bytes::Bytes::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(client.get(b"empty").await.unwrap(), Some(bytes::Bytes::new()), "{name}");
            let items = [memkv::client::PutItem::whole("a", bytes::Bytes::from_static(b"xyz"))];
            client.put_batch(&items).await.unwrap();
            let got = client.get_batch(&[memkv::client::GetItem::whole("a")]).await.unwrap();
            assert_eq!(got, vec![Some(bytes::Bytes::from_static(b"xyz"))], "{name}");
        }
    });
}

/// Shared memory (`RssShmem`) the process has in memory, in KiB.
fn rss_shmem_kib(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssShmem:")).expect("RssShmem in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_node_started_with_prefault_has_its_arena_in_memory_before_it_is_ready() {
    let creds = Creds::new();
    let lazy = Node::start(&creds, "127.0.0.7", &["--memory", "64MiB"]);
    let eager = Node::start(&creds, "127.0.0.7", &["--memory", "64MiB", "--prefault"]);
    assert!(rss_shmem_kib(&lazy) < 16 << 10, "without --prefault: {} KiB", rss_shmem_kib(&lazy));
    assert!(rss_shmem_kib(&eager) >= 64 << 10, "with --prefault: {} KiB", rss_shmem_kib(&eager));
    let client = creds.client(&[&eager], &[]);
    runtime().block_on(async {
        let block = common::pattern(3 << 20, 7);
        client.put(b"k", block.clone()).await.unwrap();
        assert_eq!(client.get(b"k").await.unwrap(), Some(block));
    });
}

#[test]
fn prefaulting_more_memory_than_the_host_has_is_refused_at_start_naming_the_fix() {
    let creds = Creds::new();
    let out = std::process::Command::new(common::server_bin())
        .args(["--listen", "127.0.0.7:0", "--memory", "64TiB", "--prefault"])
        .env_clear()
        .envs(creds.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot commit the 64 TiB DRAM arena at start-up (--prefault / MEMKV_PREFAULT)")
            && err.contains("available (MemAvailable in /proc/meminfo)")
            && err.contains("lower --memory / MEMKV_MEMORY"),
        "{err}"
    );
}
