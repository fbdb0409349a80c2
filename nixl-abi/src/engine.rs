//! The MEMKV backend engine: registrations, transfer requests and queries on top of the memkv
//! client, run on the engine's own tokio runtime so that NIXL's calls never block on the network
//! (except `queryMem`, which NIXL defines as synchronous).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memkv::Client;
use memkv::client::{ClientError, GetItem, Loans, PreparedGet, PreparedPut, PutSpec};
use memkv::client::{StagedError, StagedPart};
use memkv::config::{ClientConfig, Sources};
use memkv::mem::cache::Entry;
use memkv::mem::{Declared, Handle, Kind, MemError, Path, Registered, Registry};
use memkv::wire::Status;
use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::ffi::{Desc, mem, op, status};
use crate::plan::{self, Pair, ReadPart, WritePart};

/// How often a waiting caller re-checks a finishing task or outstanding loans.
const POLL: Duration = Duration::from_micros(50);

/// What a registerMem hands NIXL: an OBJ_SEG object's key (without the namespace, which the
/// client adds), or a DRAM_SEG / VRAM_SEG region of the registry.
#[derive(Debug)]
pub enum Reg {
    /// An object.
    Obj(Vec<u8>),
    /// Local memory.
    Local(Handle),
}

/// The object key of a registration descriptor: its metaInfo, or the decimal devId when empty.
pub fn object_key(meta: &[u8], dev_id: u64) -> Vec<u8> {
    if meta.is_empty() { dev_id.to_string().into_bytes() } else { meta.to_vec() }
}

/// What a request does, planned once at prep time and reused by every post: the descriptor
/// pool. Each part is located in one of the request's registered regions, and the client's
/// batch (keys, node groups, entry tables) is prepared, so a post allocates per region and per
/// node, never per descriptor.
enum Work {
    Write(Vec<WritePart>, PreparedPut),
    Read(Vec<ReadPart>, PreparedGet),
}

struct Planned {
    /// The request's objects, indexed by the plan.
    keys: Vec<Vec<u8>>,
    /// The registered regions the local descriptors lie in.
    regions: Vec<Arc<Entry<Registered>>>,
    /// Per part (in plan order): its region and its offset there.
    at: Vec<(usize, usize)>,
    /// For VRAM requests, the GPU: its bytes move through the staging slots (the TCP transport
    /// cannot read or write device memory).
    gpu: Option<i32>,
    work: Work,
}

/// One NIXL request handle.
pub struct Request {
    planned: Arc<Planned>,
    /// A `nixl_status_t`: IN_PROG while a post runs, then its result.
    state: Arc<AtomicI32>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The client's views of the caller's memory (queued payloads, answers being received).
    loans: Loans,
}

/// The engine behind one `create_backend("MEMKV", ...)`.
pub struct Engine {
    client: Client,
    registry: Arc<Registry>,
    rt: Option<Runtime>,
    op_timeout: Duration,
}

impl Engine {
    /// Resolves the config chain with `params` on top, verifies the license and starts the I/O
    /// runtime. Connections are made by the first transfer.
    pub fn create(agent: &str, params: &BTreeMap<String, String>) -> Result<Self, String> {
        memkv::logging::init(memkv::logging::LogFormat::Text, "info");
        let env = Sources::process_env();
        let cfg = ClientConfig::resolve(&Sources { explicit: params, env: &env }).map_err(|e| e.to_string())?;
        let (threads, op_timeout) = (cfg.io_threads, cfg.op_timeout);
        let (metrics_at, summary_every) = (cfg.mem.prometheus_bind, cfg.mem.stats_interval);
        let registry = Arc::new(Registry::open(&cfg).map_err(|e| e.to_string())?);
        let client = Client::new(cfg).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("memkv-nixl-io")
            .enable_all()
            .build()
            .map_err(|e| format!("could not start the I/O runtime ({threads} threads, MEMKV_IO_THREADS): {e}"))?;
        if let Some(addr) = metrics_at {
            let bound = rt
                .block_on(memkv::mem::metrics::serve(addr, Arc::clone(&registry)))
                .map_err(|e| format!("MEMKV_PROMETHEUS_BIND={addr}: cannot listen there ({e}); pick a free address"))?;
            tracing::info!("MEMKV client metrics at http://{bound}/metrics");
        }
        if let Some(every) = summary_every {
            rt.spawn(memkv::mem::metrics::log_every(Arc::clone(&registry), every));
        }
        let lic = &client.license().claims;
        tracing::info!(
            agent,
            servers = client.servers().len(),
            namespace = client.namespace(),
            licensee = %lic.licensee,
            "MEMKV NIXL backend ready"
        );
        Ok(Self { client, registry, rt: Some(rt), op_timeout })
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("runtime lives until drop")
    }

    /// registerMem: DRAM_SEG and VRAM_SEG go into the registry (registered with the NICs, or
    /// marked for staging); OBJ_SEG records the object key (no round trip).
    pub fn register(&self, mem_type: i32, addr: u64, len: u64, dev_id: u64, meta: &[u8]) -> Result<Box<Reg>, i32> {
        match mem_type {
            mem::DRAM | mem::VRAM => {
                let declared = if mem_type == mem::DRAM { Declared::Dram } else { Declared::Vram };
                match self.registry.register(addr, len, declared) {
                    Ok(h) => Ok(Box::new(Reg::Local(h))),
                    Err(e) => {
                        tracing::error!(dev_id, "MEMKV: cannot register {}: {e}", mem::name(mem_type));
                        Err(match e {
                            MemError::CudaUnavailable(_) | MemError::StagingOff { .. } => status::ERR_NOT_SUPPORTED,
                            MemError::NotDevice { .. }
                            | MemError::PastAllocation { .. }
                            | MemError::InvalidRange { .. }
                            | MemError::NotRegistered { .. } => status::ERR_INVALID_PARAM,
                            MemError::Cuda(_) | MemError::Register { .. } | MemError::Staging(_) => status::ERR_BACKEND,
                        })
                    }
                }
            }
            mem::OBJ => {
                let key = object_key(meta, dev_id);
                if let Err(e) = self.client.check_key(&key) {
                    tracing::error!(dev_id, key = %String::from_utf8_lossy(&key), "MEMKV: cannot register OBJ_SEG: {e}");
                    return Err(status::ERR_INVALID_PARAM);
                }
                Ok(Box::new(Reg::Obj(key)))
            }
            t => {
                tracing::error!(
                    "MEMKV: cannot register {}: MEMKV handles DRAM_SEG, VRAM_SEG and OBJ_SEG",
                    mem::name(t)
                );
                Err(status::ERR_NOT_SUPPORTED)
            }
        }
    }

    /// deregisterMem.
    pub fn deregister(&self, reg: Reg) {
        if let Reg::Local(h) = reg {
            self.registry.deregister(h);
        }
    }

    /// The registry (stats, staging pool).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// prepXfer: validates the lists and plans the request.
    pub fn prep(
        &self,
        xfer_op: i32,
        local_type: i32,
        local: &[Desc],
        remote_type: i32,
        remote: &[Desc],
        has_notif: bool,
    ) -> Result<Box<Request>, i32> {
        let fail = |code: i32, why: String| {
            tracing::error!("MEMKV: transfer rejected: {why}");
            code
        };
        if xfer_op != op::READ && xfer_op != op::WRITE {
            return Err(fail(status::ERR_INVALID_PARAM, format!("unknown operation {xfer_op}; use READ or WRITE")));
        }
        if has_notif {
            return Err(fail(status::ERR_NOT_SUPPORTED, "MEMKV does not send notifications; drop notif_msg".into()));
        }
        if local_type != mem::DRAM && local_type != mem::VRAM {
            return Err(fail(
                status::ERR_INVALID_PARAM,
                format!("the local list is {}; MEMKV moves DRAM_SEG and VRAM_SEG memory", mem::name(local_type)),
            ));
        }
        if remote_type != mem::OBJ {
            return Err(fail(
                status::ERR_INVALID_PARAM,
                format!("the remote list is {}; MEMKV's remote side is OBJ_SEG", mem::name(remote_type)),
            ));
        }
        if local.len() != remote.len() {
            return Err(fail(
                status::ERR_INVALID_PARAM,
                format!("{} local descriptors but {} remote ones", local.len(), remote.len()),
            ));
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut index: BTreeMap<*const Reg, usize> = BTreeMap::new();
        let mut pairs = Vec::with_capacity(local.len());
        for (i, (l, r)) in local.iter().zip(remote).enumerate() {
            if l.len != r.len {
                return Err(fail(
                    status::ERR_MISMATCH,
                    format!("descriptor {i}: local length {} differs from remote length {}", l.len, r.len),
                ));
            }
            let obj = r.obj.cast_const().cast::<Reg>();
            // SAFETY: a non-null `obj` came from our register() and NIXL only hands out
            // registrations it still holds.
            let Some(Reg::Obj(key)) = (unsafe { obj.as_ref() }) else {
                return Err(fail(
                    status::ERR_INVALID_PARAM,
                    format!("descriptor {i}: devId {} is not an OBJ_SEG registration of MEMKV", r.dev_id),
                ));
            };
            // The key is copied so the request never touches the registration again.
            let object = *index.entry(obj).or_insert_with(|| {
                keys.push(key.clone());
                keys.len() - 1
            });
            pairs.push(Pair { local: l.addr, len: l.len, object, offset: r.addr });
        }
        let label = |o: usize| format!("{:?}", String::from_utf8_lossy(&keys[o]));
        let bad = |e: plan::PlanError| fail(status::ERR_INVALID_PARAM, e.0);
        let client_err = |e: ClientError| fail(error_status(&e), e.to_string());
        let (work, locals): (Work, Vec<(u64, u64)>) = if xfer_op == op::WRITE {
            let parts = plan::plan_write(&pairs, label).map_err(bad)?;
            let specs =
                parts.iter().map(|p| PutSpec { key: &keys[p.object], offset: p.offset, len: p.len, total: p.total });
            let prepared = self.client.prepare_put(specs).map_err(client_err)?;
            let locals = parts.iter().map(|p| (p.src, p.len)).collect();
            (Work::Write(parts, prepared), locals)
        } else {
            let parts = plan::plan_read(&pairs).map_err(bad)?;
            let items: Vec<GetItem> = parts
                .iter()
                .map(|p| GetItem { key: keys[p.object].clone(), offset: p.offset, length: p.len })
                .collect();
            let prepared = self.client.prepare_get(&items).map_err(client_err)?;
            let locals = parts.iter().map(|p| (p.dst, p.len)).collect();
            (Work::Read(parts, prepared), locals)
        };
        // Locate every part in its registered region: one MR-cache lookup each, here and not
        // per post.
        let mut regions: Vec<Arc<Entry<Registered>>> = Vec::new();
        let mut region_of: BTreeMap<*const Entry<Registered>, usize> = BTreeMap::new();
        let mut at = Vec::with_capacity(locals.len());
        for (addr, len) in locals {
            let entry = self.registry.resolve(addr, len).map_err(|e| fail(status::ERR_INVALID_PARAM, e.to_string()))?;
            let want = if local_type == mem::VRAM { "VRAM_SEG" } else { "DRAM_SEG" };
            let is_gpu = entry.value().region.path != Path::Host;
            if is_gpu != (local_type == mem::VRAM) {
                return Err(fail(
                    status::ERR_INVALID_PARAM,
                    format!("{addr:#x} (+{len} bytes) lies in memory registered as the other kind than {want}"),
                ));
            }
            let idx = *region_of.entry(Arc::as_ptr(&entry)).or_insert_with(|| {
                regions.push(entry);
                regions.len() - 1
            });
            at.push((idx, (addr - regions[idx].start()) as usize));
        }
        let mut gpus = regions.iter().filter_map(|r| match r.value().region.kind {
            Kind::Device { ordinal } => Some(ordinal),
            Kind::Host => None,
        });
        let gpu = gpus.next();
        if let Some(other) = gpus.find(|&o| Some(o) != gpu) {
            return Err(fail(
                status::ERR_INVALID_PARAM,
                format!(
                    "the VRAM descriptors lie on GPU {} and GPU {other}; post one request per GPU",
                    gpu.unwrap_or(0)
                ),
            ));
        }
        Ok(Box::new(Request {
            planned: Arc::new(Planned { keys, regions, at, gpu, work }),
            state: Arc::new(AtomicI32::new(status::SUCCESS)),
            task: Mutex::new(None),
            loans: Loans::new(),
        }))
    }

    /// postXfer: starts the request on the I/O runtime and returns IN_PROG.
    pub fn post(&self, req: &Request) -> i32 {
        let mut task = req.task.lock();
        // The previous post is over once it stored its result (its task may still be returning).
        if req.state.load(Ordering::Acquire) == status::IN_PROG && task.as_ref().is_some_and(|t| !t.is_finished()) {
            return status::ERR_REPOST_ACTIVE;
        }
        req.state.store(status::IN_PROG, Ordering::Release);
        let (client, planned, state, loans) =
            (self.client.clone(), Arc::clone(&req.planned), Arc::clone(&req.state), req.loans.clone());
        let registry = Arc::clone(&self.registry);
        *task = Some(self.rt().spawn(async move {
            let result = match planned.gpu {
                Some(gpu) => run_staged(&client, &registry, gpu, &planned).await,
                None => run(&client, &planned, &loans).await,
            };
            // Done only when the client holds no view of the caller's memory any more.
            while loans.outstanding() > 0 {
                tokio::time::sleep(POLL).await;
            }
            state.store(result, Ordering::Release);
        }));
        status::IN_PROG
    }

    /// checkXfer: never blocks.
    pub fn check(&self, req: &Request) -> i32 {
        let s = req.state.load(Ordering::Acquire);
        if s == status::IN_PROG && req.task.lock().as_ref().is_some_and(|t| t.is_finished()) {
            // Finished: the result is stored now, unless the task panicked (the panic was logged).
            return match req.state.load(Ordering::Acquire) {
                status::IN_PROG => status::ERR_UNKNOWN,
                done => done,
            };
        }
        s
    }

    /// releaseReqH: aborts a running request. Returns false (the request stays valid) when its
    /// payloads could not be withdrawn within the op timeout.
    pub fn release(&self, req: &Request) -> bool {
        if let Some(t) = req.task.lock().as_ref().filter(|t| !t.is_finished()) {
            t.abort();
            while !t.is_finished() {
                std::thread::sleep(POLL);
            }
        }
        // Frames may still be queued, or an answer still being received into the caller's memory.
        let deadline = Instant::now() + self.op_timeout;
        while req.loans.outstanding() > 0 {
            if Instant::now() > deadline {
                tracing::error!(
                    "MEMKV: cannot release the request yet: the connection still uses its memory (a node that stopped \
                     reading or answering); release it again later"
                );
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    }

    /// queryMem: object sizes (None = absent), one batched EXISTS per node.
    pub fn query(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<u64>>, i32> {
        let client = self.client.clone();
        match self.block_on(async move { client.exists(&keys).await }) {
            Some(Ok(sizes)) => Ok(sizes),
            Some(Err(e)) => {
                tracing::error!("MEMKV: queryMem failed: {e}");
                Err(error_status(&e))
            }
            None => Err(status::ERR_UNKNOWN),
        }
    }

    /// Runs `fut` on the I/O runtime and waits for it from any thread (including threads of the
    /// host's own async runtime, where `Runtime::block_on` would panic). None if it panicked.
    fn block_on<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Never blocks, so NIXL may destroy the engine from any thread.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The NIXL status for a client error.
fn error_status(e: &ClientError) -> i32 {
    match e {
        ClientError::Server { status: Status::NotFound, .. } => status::ERR_NOT_FOUND,
        ClientError::Server {
            status: Status::InvalidRequest | Status::PayloadTooLarge | Status::KeyTooLong, ..
        }
        | ClientError::KeyTooLong { .. } => status::ERR_INVALID_PARAM,
        _ => status::ERR_BACKEND,
    }
}

/// Runs one post of a request; the result is a `nixl_status_t`. Data moves between the caller's
/// memory and the sockets without copies: payloads are views of it, answers are received into it.
async fn run(client: &Client, planned: &Planned, loans: &Loans) -> i32 {
    let result = match &planned.work {
        Work::Write(parts, prepared) => {
            // One view per region (the only allocation that grows with the request's regions),
            // then a slice of it per part.
            let views: Vec<Bytes> = planned
                .regions
                .iter()
                // SAFETY: NIXL checked that the ranges lie in memory the caller registered, and
                // the caller keeps it unchanged until the request is complete or released; both
                // wait until `loans` has nothing outstanding.
                .map(|r| unsafe { loans.bytes(r.start() as *const u8, r.len() as usize) })
                .collect();
            let mut data = Vec::with_capacity(parts.len());
            data.extend(parts.iter().zip(&planned.at).map(|(p, &(r, off))| views[r].slice(off..off + p.len as usize)));
            drop(views);
            client.put_prepared(prepared, &data).await.map(|()| None)
        }
        Work::Read(parts, prepared) => {
            let mut targets = Vec::with_capacity(parts.len());
            targets.extend(parts.iter().zip(&planned.at).map(|(p, &(r, off))| {
                let at = planned.regions[r].start() as usize + off;
                // SAFETY: as for writes; the caller does not touch the memory until the request
                // is complete or released.
                unsafe { loans.target(at as *mut u8, p.len as usize) }
            }));
            client
                .get_prepared_into(prepared, targets)
                .await
                .map(|found| parts.iter().zip(found).find(|(_, f)| !f).map(|(p, _)| p.object))
        }
    };
    match result {
        Ok(None) => status::SUCCESS,
        Ok(Some(object)) => missing(client, &planned.keys[object]),
        Err(e) => {
            let n = planned.keys.len();
            match planned.work {
                Work::Write(..) => tracing::error!(objects = n, "MEMKV: WRITE failed: {e}"),
                Work::Read(..) => tracing::error!(objects = n, "MEMKV: READ failed: {e}"),
            }
            error_status(&e)
        }
    }
}

/// Runs one post of a VRAM request through the staging slots: the copy of one slot overlaps
/// the wire transfer of the previous one.
async fn run_staged(client: &Client, registry: &Registry, gpu: i32, planned: &Planned) -> i32 {
    let setup = registry.staging_pool().and_then(|pool| Ok((pool, registry.copy_engine(gpu)?)));
    let (pool, copy) = match setup {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("MEMKV: cannot stage GPU {gpu} memory: {e}");
            return status::ERR_BACKEND;
        }
    };
    let device = |&(r, off): &(usize, usize)| planned.regions[r].start() + off as u64;
    // (object, offset, len, total) of each part, in plan order.
    let (shape, write): (Vec<(usize, u64, u64, u64)>, bool) = match &planned.work {
        Work::Write(parts, _) => (parts.iter().map(|p| (p.object, p.offset, p.len, p.total)).collect(), true),
        Work::Read(parts, _) => (parts.iter().map(|p| (p.object, p.offset, p.len, 0)).collect(), false),
    };
    let parts: Vec<StagedPart<'_>> = shape
        .iter()
        .zip(&planned.at)
        .map(|(&(object, offset, len, total), at)| StagedPart {
            key: &planned.keys[object],
            offset,
            total,
            addr: device(at),
            len,
        })
        .collect();
    // SAFETY: the ranges lie in GPU memory the caller registered and keeps valid (and, for
    // reads, untouched) until the request completes or is released; release aborts this task,
    // and the pipeline settles every started copy before its future ends.
    let result = unsafe {
        if write {
            client.put_staged(&pool, &*copy, &parts).await
        } else {
            client.get_staged(&pool, &*copy, &parts).await
        }
    };
    match result {
        Ok(()) => status::SUCCESS,
        Err(StagedError::Absent(i)) => missing(client, parts[i].key),
        Err(e) => {
            tracing::error!(
                objects = planned.keys.len(),
                gpu,
                "MEMKV: staged {} failed: {e}",
                if write { "WRITE" } else { "READ" }
            );
            match e {
                StagedError::Client(c) => error_status(&c),
                _ => status::ERR_BACKEND,
            }
        }
    }
}

/// The status for an object a READ did not find: absent, or its node is down.
fn missing(client: &Client, key: &[u8]) -> i32 {
    let shown = String::from_utf8_lossy(key);
    match client.owner_of(key) {
        Ok(node) if client.unavailable_servers().contains(&node) => {
            tracing::error!(key = %shown, %node, "MEMKV: READ failed: the object's node is unavailable");
            status::ERR_BACKEND
        }
        _ => {
            tracing::debug!(key = %shown, "MEMKV: READ of an absent object");
            status::ERR_NOT_FOUND
        }
    }
}
