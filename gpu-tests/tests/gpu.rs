//! The GPU memory path on a real GPU (skipped elsewhere): pointer detection, dma-buf export, the
//! staging round trip through a live node, and the NIXL plugin's VRAM_SEG path.

use std::ffi::c_void;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use memkv::Client;
use memkv::client::StagedPart;
use memkv::mem::cuda::CudaCopy;
use memkv::mem::staging::SlotPool;
use memkv::mem::{Kind, Path};
use memkv::testing::LocalNode as Node;
use memkv_gpu_tests::{gpu, pattern};
use plugin_MEMKV::engine::{Engine, Reg};
use plugin_MEMKV::ffi::{Desc, mem, op, status};

const MIB: usize = 1 << 20;

#[test]
fn device_memory_is_recognised_with_its_allocation() {
    let Some(c) = gpu("device_memory_is_recognised_with_its_allocation") else { return };
    let d = c.alloc_device(0, 4 * MIB).expect("cuMemAlloc");
    let info = c.pointer_info(d.addr() + 12_345).expect("pointer attributes");
    assert!(info.device, "{info:?}");
    assert_eq!(info.ordinal, 0, "{info:?}");
    assert_eq!(info.base, d.addr(), "the allocation's base: {info:?}");
    assert!(info.size >= 4 * MIB as u64, "{info:?}");
    let host = vec![0u8; 4096];
    assert!(!c.pointer_info(host.as_ptr() as u64).expect("host pointer").device, "malloc memory is not device memory");
    let pinned = c.alloc_pinned(MIB).expect("cuMemHostAlloc");
    assert!(!c.pointer_info(pinned.as_ptr() as u64).expect("pinned pointer").device, "pinned memory is host memory");
    println!("GPU 0 is {}; allocation {:#x}+{} bytes", c.bus_id(0).expect("bus id"), info.base, info.size);
}

#[test]
fn device_memory_exports_as_a_dmabuf_or_says_why_not() {
    let Some(c) = gpu("device_memory_exports_as_a_dmabuf_or_says_why_not") else { return };
    let d = c.alloc_device(0, 2 * MIB).expect("cuMemAlloc");
    let info = c.pointer_info(d.addr()).expect("pointer attributes");
    match c.export_dmabuf(0, info.base, info.size) {
        Ok(fd) => {
            // SAFETY: a plain C struct, all zeroes is a valid value.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat on a descriptor we own, into a local.
            assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0, "the dma-buf descriptor is valid");
            println!("dma-buf exported: fd {}", fd.as_raw_fd());
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("cuMemGetHandleForAddressRange"), "the refusal names the call: {text}");
            println!("dma-buf not available on this GPU/driver: {text}");
        }
    }
}

#[test]
fn staged_blocks_round_trip_vram_to_node_and_back() {
    let Some(c) = gpu("staged_blocks_round_trip_vram_to_node_and_back") else { return };
    let node = Node::start("127.0.9.1");
    let client = Client::new(node.client_config(&[])).expect("client");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let slot = MIB;
    let pool = SlotPool::new(Box::new(c.alloc_pinned(4 * slot).expect("pinned slots")), slot).expect("pool");
    let engine = CudaCopy::new(0).expect("stream");
    let sizes = [4096usize, slot, slot + 1, 5 * slot + 123];
    let total: usize = sizes.iter().sum();
    let src = c.alloc_device(0, total).expect("source");
    let dst = c.alloc_device(0, total).expect("destination");
    let bytes = pattern(total, 3);
    c.copy_to_device(0, src.addr(), &bytes).expect("fill");
    let keys: Vec<String> = (0..sizes.len()).map(|i| format!("gpu-test-{i}")).collect();
    let mut at = 0u64;
    let mut parts = Vec::new();
    for (k, &n) in keys.iter().zip(&sizes) {
        parts.push(StagedPart { key: k.as_bytes(), offset: 0, total: n as u64, addr: src.addr() + at, len: n as u64 });
        at += n as u64;
    }
    // SAFETY: `src` lives and is unchanged until the future completes.
    rt.block_on(unsafe { client.put_staged(&pool, &engine, &parts) }).expect("staged WRITE");
    let back: Vec<StagedPart<'_>> =
        parts.iter().map(|p| StagedPart { addr: p.addr - src.addr() + dst.addr(), ..*p }).collect();
    // SAFETY: `dst` lives and nothing else touches it until the future completes.
    rt.block_on(unsafe { client.get_staged(&pool, &engine, &back) }).expect("staged READ");
    let mut host = vec![0u8; total];
    c.copy_to_host(0, &mut host, dst.addr()).expect("read back");
    assert!(host == bytes, "VRAM → node → VRAM is byte-exact");
    let s = pool.stats();
    assert_eq!((s.busy, s.bytes_staged_out, s.bytes_staged_in), (0, total as u64, total as u64), "{s:?}");
}

fn desc(addr: u64, len: u64, dev_id: u64, obj: *mut c_void) -> Desc {
    Desc { addr, len, dev_id, obj }
}

fn wait(engine: &Engine, req: &plugin_MEMKV::engine::Request) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = engine.check(req);
        if s != status::IN_PROG || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn plugin_moves_kvbm_shaped_vram_blocks_through_staging() {
    let Some(c) = gpu("plugin_moves_kvbm_shaped_vram_blocks_through_staging") else { return };
    let node = Node::start("127.0.9.2");
    let mut params = node.params.clone();
    params.insert("staging_size_mb".into(), "64".into());
    params.insert("staging_slot_mb".into(), "4".into());
    let engine = Engine::create("gpu-test", &params).expect("backend");
    // KVBM-shaped: 8 blocks of 2 MiB in one device pool, one OBJ_SEG object per block.
    let (blocks, block) = (8usize, 2 * MIB);
    let src = c.alloc_device(0, blocks * block).expect("source pool");
    let dst = c.alloc_device(0, blocks * block).expect("destination pool");
    let bytes = pattern(blocks * block, 9);
    c.copy_to_device(0, src.addr(), &bytes).expect("fill");
    let reg =
        |addr: u64| engine.register(mem::VRAM, addr, (blocks * block) as u64, 0, b"").expect("VRAM_SEG registers");
    let (src_reg, dst_reg) = (reg(src.addr()), reg(dst.addr()));
    let Reg::Local(h) = &*src_reg else { panic!("a local registration") };
    assert_eq!(h.region().kind, Kind::Device { ordinal: 0 });
    assert_eq!(h.region().path, Path::Staging, "no NIC with MEMKV_TRANSPORT=tcp: staging");
    let objs: Vec<Box<Reg>> = (0..blocks)
        .map(|i| {
            engine.register(mem::OBJ, 0, block as u64, i as u64, format!("kv-block-{i}").as_bytes()).expect("OBJ_SEG")
        })
        .collect();
    let remote: Vec<Desc> = objs
        .iter()
        .enumerate()
        .map(|(i, o)| desc(0, block as u64, i as u64, (&**o as *const Reg).cast_mut().cast()))
        .collect();
    let local = |base: u64| -> Vec<Desc> {
        (0..blocks).map(|i| desc(base + (i * block) as u64, block as u64, 0, std::ptr::null_mut())).collect()
    };
    let write = engine.prep(op::WRITE, mem::VRAM, &local(src.addr()), mem::OBJ, &remote, false).expect("prep WRITE");
    assert_eq!(engine.post(&write), status::IN_PROG);
    assert_eq!(wait(&engine, &write), status::SUCCESS, "WRITE completes");
    let read = engine.prep(op::READ, mem::VRAM, &local(dst.addr()), mem::OBJ, &remote, false).expect("prep READ");
    assert_eq!(engine.post(&read), status::IN_PROG);
    assert_eq!(wait(&engine, &read), status::SUCCESS, "READ completes");
    let mut host = vec![0u8; blocks * block];
    c.copy_to_host(0, &mut host, dst.addr()).expect("read back");
    assert!(host == bytes, "VRAM → MEMKV → VRAM through the plugin is byte-exact");

    // A descriptor past the registration is refused at prep.
    let mut bad = local(src.addr());
    bad[0].addr = src.addr() + (blocks * block) as u64;
    let e = engine.prep(op::WRITE, mem::VRAM, &bad, mem::OBJ, &remote, false).err();
    assert_eq!(e, Some(status::ERR_INVALID_PARAM));
    assert!(engine.release(&write) && engine.release(&read));
    for o in objs {
        engine.deregister(*o);
    }
    engine.deregister(*src_reg);
    engine.deregister(*dst_reg);
    let stats = engine.registry().stats();
    assert_eq!(stats.regions, 0, "{stats:?}");
    println!("{}", memkv::mem::metrics::summary(&stats));
}
