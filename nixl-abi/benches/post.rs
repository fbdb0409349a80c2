//! The cost of the plugin's hot path per descriptor (issue 5): one prepared request of N
//! descriptors (4 KiB blocks of one registered DRAM pool, one OBJ_SEG object each) posted and
//! completed against an in-process node on 127.0.9.20. Criterion reports elements/s, so the
//! time per descriptor is its inverse; comparing N = 16 and N = 1024 shows what a descriptor
//! costs once the per-request round trip is amortised.
#![allow(missing_docs)]

use std::ffi::c_void;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use memkv::testing::LocalNode;
use plugin_MEMKV::engine::{Engine, Reg, Request};
use plugin_MEMKV::ffi::{Desc, mem, op, status};

const BLOCK: u64 = 4096;

fn complete(engine: &Engine, req: &Request) {
    assert_eq!(engine.post(req), status::IN_PROG);
    loop {
        match engine.check(req) {
            status::IN_PROG => std::thread::yield_now(),
            status::SUCCESS => return,
            s => panic!("transfer failed with {s}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let node = LocalNode::start("127.0.9.20");
    let mut params = node.params.clone();
    params.insert("num_connections".into(), "1".into());
    let engine = Engine::create("bench-post", &params).expect("backend");
    let most = 1024usize;
    let mut pool = vec![7u8; most * BLOCK as usize];
    let base = pool.as_mut_ptr() as u64;
    let region = engine.register(mem::DRAM, base, pool.len() as u64, 0, b"").expect("DRAM_SEG");
    let objs: Vec<Box<Reg>> = (0..most)
        .map(|i| engine.register(mem::OBJ, 0, BLOCK, i as u64, format!("bench-{i}").as_bytes()).expect("OBJ_SEG"))
        .collect();
    let mut g = c.benchmark_group("post_per_descriptor");
    for n in [16usize, 256, 1024] {
        let local: Vec<Desc> = (0..n)
            .map(|i| Desc { addr: base + i as u64 * BLOCK, len: BLOCK, dev_id: 0, obj: std::ptr::null_mut() })
            .collect();
        let remote: Vec<Desc> = (0..n)
            .map(|i| Desc {
                addr: 0,
                len: BLOCK,
                dev_id: i as u64,
                obj: (&*objs[i] as *const Reg).cast_mut().cast::<c_void>(),
            })
            .collect();
        let write = engine.prep(op::WRITE, mem::DRAM, &local, mem::OBJ, &remote, false).expect("prep WRITE");
        let read = engine.prep(op::READ, mem::DRAM, &local, mem::OBJ, &remote, false).expect("prep READ");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("write_{n}x4KiB"), |b| b.iter(|| complete(&engine, &write)));
        g.bench_function(format!("read_{n}x4KiB"), |b| b.iter(|| complete(&engine, &read)));
        assert!(engine.release(&write) && engine.release(&read));
    }
    g.finish();
    for o in objs {
        engine.deregister(*o);
    }
    engine.deregister(*region);
}

criterion_group!(benches, bench);
criterion_main!(benches);
