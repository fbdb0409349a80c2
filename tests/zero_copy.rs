//! Zero-copy transfers with caller-owned memory (what the NIXL plugin uses): PUT payloads that
//! are views of the caller's memory, GET answers received straight into it, and the loan count
//! that tells the caller when the client no longer touches that memory, also after timeouts.
//! Real `memkv-server` processes on 127.0.4.x.

mod common;

use std::time::{Duration, Instant};

use common::{Creds, Node, runtime};
use memkv::client::{GetItem, Loans, PutItem};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn wait_no_loans(loans: &Loans, within: Duration) {
    let deadline = Instant::now() + within;
    while loans.outstanding() > 0 {
        assert!(Instant::now() < deadline, "{} loans still outstanding after {within:?}", loans.outstanding());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn lent_puts_and_reads_into_targets_move_the_exact_bytes() {
    let creds = Creds::new();
    let nodes: Vec<Node> = ["127.0.4.1", "127.0.4.2"].iter().map(|ip| Node::start(&creds, ip, &[])).collect();
    let client = creds.client(&nodes.iter().collect::<Vec<_>>(), &[]);
    let rt = runtime();
    let sizes = [1usize, 4096, 65_537, 2 << 20];
    let src: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();

    let loans = Loans::new();
    let items: Vec<PutItem> = src
        .iter()
        .enumerate()
        // SAFETY: `src` outlives the PUT and is not modified; checked below with `outstanding`.
        .map(|(i, s)| PutItem::whole(format!("zc-{i}"), unsafe { loans.bytes(s.as_ptr(), s.len()) }))
        .collect();
    assert_eq!(loans.outstanding(), sizes.len());
    rt.block_on(client.put_batch(&items)).unwrap();
    drop(items);
    wait_no_loans(&loans, Duration::from_secs(2));

    // Whole objects, a range, and an absent key, read into caller memory.
    let mut dst: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
    let mut range = vec![0u8; 1000];
    let mut absent = vec![0xAAu8; 16];
    let mut items: Vec<GetItem> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| GetItem { key: format!("zc-{i}").into(), offset: 0, length: n as u64 })
        .collect();
    items.push(GetItem { key: b"zc-3".to_vec(), offset: 12_345, length: 1000 });
    items.push(GetItem { key: b"zc-missing".to_vec(), offset: 0, length: 16 });
    let mut targets = Vec::new();
    // SAFETY: every buffer outlives the read and nothing else touches it until the loans end.
    unsafe {
        for d in dst.iter_mut() {
            targets.push(loans.target(d.as_mut_ptr(), d.len()));
        }
        targets.push(loans.target(range.as_mut_ptr(), range.len()));
        targets.push(loans.target(absent.as_mut_ptr(), absent.len()));
    }
    let found = rt.block_on(client.get_batch_into(&items, targets)).unwrap();
    wait_no_loans(&loans, Duration::from_secs(2));
    assert_eq!(found, [true, true, true, true, true, false]);
    assert_eq!(dst, src);
    assert_eq!(range, src[3][12_345..13_345]);
    assert_eq!(absent, [0xAA; 16], "an absent entry's target is left alone");

    // Targets must match their entries exactly.
    let mut small = vec![0u8; 10];
    // SAFETY: as above.
    let t = unsafe { loans.target(small.as_mut_ptr(), small.len()) };
    let e = rt.block_on(client.get_batch_into(&[GetItem { key: b"zc-1".to_vec(), offset: 0, length: 4096 }], vec![t]));
    assert!(e.unwrap_err().to_string().contains("10-byte read target for an entry of 4096 bytes"));
    wait_no_loans(&loans, Duration::from_secs(1));
}

#[test]
fn a_stalled_node_releases_lent_memory_once_the_op_times_out() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.4.3", &["--memory", "512MiB"]);
    let client = creds.client(&[&node], &[("op_timeout_ms", "500"), ("num_connections", "1")]);
    let rt = runtime();
    let block = pattern(8 << 20, 9);
    rt.block_on(client.put(b"stall-0", block.clone().into())).unwrap();
    node.freeze();

    // 64 MiB of lent payloads: far more than the socket buffers take while the node is stopped.
    let loans = Loans::new();
    let items: Vec<PutItem> = (0..8)
        // SAFETY: `block` outlives every loan (checked with `outstanding` before it is dropped).
        .map(|i| PutItem::whole(format!("stall-{i}"), unsafe { loans.bytes(block.as_ptr(), block.len()) }))
        .collect();
    let started = Instant::now();
    let r = rt.block_on(client.put_batch(&items));
    assert!(r.unwrap_err().to_string().contains("timed out"), "the write times out");
    drop(items);
    // The timed-out session is closed, so its queued frames (and their loans) are dropped.
    wait_no_loans(&loans, Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    node.thaw();
    // After the backoff the node serves again, and nothing lent was written to it half-way.
    let mut got = vec![0u8; block.len()];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: `got` outlives the read.
        let t = unsafe { loans.target(got.as_mut_ptr(), got.len()) };
        let item = GetItem { key: b"stall-0".to_vec(), offset: 0, length: block.len() as u64 };
        match rt.block_on(client.get_batch_into(&[item], vec![t])) {
            Ok(found) if found == [true] => break,
            other => assert!(Instant::now() < deadline, "node did not come back: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_no_loans(&loans, Duration::from_secs(1));
    assert!(got == block, "the object written before the stall reads back intact");
}
