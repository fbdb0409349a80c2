//! The MEMKV backend engine: registrations, transfer requests and queries on top of the memkv
//! client, run on the engine's own tokio runtime so that NIXL's calls never block on the network
//! (except `queryMem`, which NIXL defines as synchronous).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memkv::Client;
use memkv::client::{ClientError, GetItem, PutItem};
use memkv::config::{ClientConfig, Sources};
use memkv::wire::Status;
use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::ffi::{Desc, mem, op, status};
use crate::plan::{self, Pair, ReadPart, WritePart};

/// How often a blocked caller re-checks a finishing task or outstanding borrows.
const POLL: Duration = Duration::from_micros(50);

/// An OBJ_SEG registration: the object's key (without the namespace, which the client adds).
#[derive(Debug)]
pub struct ObjReg {
    key: Vec<u8>,
}

/// The object key of a registration descriptor: its metaInfo, or the decimal devId when empty.
pub fn object_key(meta: &[u8], dev_id: u64) -> Vec<u8> {
    if meta.is_empty() { dev_id.to_string().into_bytes() } else { meta.to_vec() }
}

/// What a request does, planned once at prep time and reused by every post.
enum Work {
    Write(Vec<WritePart>),
    Read(Vec<ReadPart>),
}

struct Planned {
    /// The request's objects, indexed by the plan.
    keys: Vec<Vec<u8>>,
    work: Work,
}

/// One NIXL request handle.
pub struct Request {
    planned: Arc<Planned>,
    /// A `nixl_status_t`: IN_PROG while a post runs, then its result.
    state: Arc<AtomicI32>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Payloads that still point into the caller's memory (queued or being written).
    borrows: Arc<AtomicUsize>,
}

/// A zero-copy view of caller memory handed to the client as a PUT payload. The request counts
/// live views, so a request is never finished or freed while a queued frame can still read them.
struct Borrowed {
    ptr: *const u8,
    len: usize,
    live: Arc<AtomicUsize>,
}

// SAFETY: the memory is only read, and NIXL's contract keeps it valid and unchanged until the
// request completes or is released, both of which wait for every view to be dropped.
unsafe impl Send for Borrowed {}
// SAFETY: as above; shared reads only.
unsafe impl Sync for Borrowed {}

impl AsRef<[u8]> for Borrowed {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the Send impl: the range stays valid while this view lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The engine behind one `create_backend("MEMKV", ...)`.
pub struct Engine {
    client: Client,
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
        let client = Client::new(cfg).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("memkv-nixl-io")
            .enable_all()
            .build()
            .map_err(|e| format!("could not start the I/O runtime ({threads} threads, MEMKV_IO_THREADS): {e}"))?;
        let lic = &client.license().claims;
        tracing::info!(
            agent,
            servers = client.servers().len(),
            namespace = client.namespace(),
            licensee = %lic.licensee,
            "MEMKV NIXL backend ready"
        );
        Ok(Self { client, rt: Some(rt), op_timeout })
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("runtime lives until drop")
    }

    /// registerMem: DRAM_SEG needs nothing; OBJ_SEG records the object key (no round trip).
    pub fn register(&self, mem_type: i32, dev_id: u64, meta: &[u8]) -> Result<Option<Box<ObjReg>>, i32> {
        match mem_type {
            mem::DRAM => Ok(None),
            mem::OBJ => {
                let key = object_key(meta, dev_id);
                if let Err(e) = self.client.check_key(&key) {
                    tracing::error!(dev_id, key = %String::from_utf8_lossy(&key), "MEMKV: cannot register OBJ_SEG: {e}");
                    return Err(status::ERR_INVALID_PARAM);
                }
                Ok(Some(Box::new(ObjReg { key })))
            }
            mem::VRAM => {
                tracing::error!(
                    "MEMKV: VRAM_SEG registration is not available: this build of libplugin_MEMKV.so has no GPU memory \
                     path yet. Register host memory (DRAM_SEG) with MEMKV, or stage GPU blocks through host memory"
                );
                Err(status::ERR_NOT_SUPPORTED)
            }
            t => {
                tracing::error!("MEMKV: cannot register {}: MEMKV handles DRAM_SEG and OBJ_SEG", mem::name(t));
                Err(status::ERR_NOT_SUPPORTED)
            }
        }
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
        match local_type {
            mem::DRAM => {}
            mem::VRAM => {
                return Err(fail(
                    status::ERR_NOT_SUPPORTED,
                    "VRAM_SEG transfers need the GPU memory path, which this build does not have".into(),
                ));
            }
            t => {
                return Err(fail(
                    status::ERR_INVALID_PARAM,
                    format!("the local list is {}; MEMKV moves DRAM_SEG memory", mem::name(t)),
                ));
            }
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
        let mut index: BTreeMap<*const ObjReg, usize> = BTreeMap::new();
        let mut pairs = Vec::with_capacity(local.len());
        for (i, (l, r)) in local.iter().zip(remote).enumerate() {
            if l.len != r.len {
                return Err(fail(
                    status::ERR_MISMATCH,
                    format!("descriptor {i}: local length {} differs from remote length {}", l.len, r.len),
                ));
            }
            let obj = r.obj.cast_const().cast::<ObjReg>();
            if obj.is_null() {
                return Err(fail(
                    status::ERR_INVALID_PARAM,
                    format!("descriptor {i}: devId {} is not an OBJ_SEG registration of MEMKV", r.dev_id),
                ));
            }
            let object = *index.entry(obj).or_insert_with(|| {
                // SAFETY: `obj` came from our register() and NIXL only hands out registrations it
                // still holds; the key is copied so the request never touches it again.
                keys.push(unsafe { &*obj }.key.clone());
                keys.len() - 1
            });
            pairs.push(Pair { local: l.addr, len: l.len, object, offset: r.addr });
        }
        let label = |o: usize| format!("{:?}", String::from_utf8_lossy(&keys[o]));
        let work = if xfer_op == op::WRITE {
            plan::plan_write(&pairs, label).map(Work::Write)
        } else {
            plan::plan_read(&pairs).map(Work::Read)
        }
        .map_err(|e| fail(status::ERR_INVALID_PARAM, e.0))?;
        Ok(Box::new(Request {
            planned: Arc::new(Planned { keys, work }),
            state: Arc::new(AtomicI32::new(status::SUCCESS)),
            task: Mutex::new(None),
            borrows: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// postXfer: starts the request on the I/O runtime and returns IN_PROG.
    pub fn post(&self, req: &Request) -> i32 {
        let mut task = req.task.lock();
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return status::ERR_REPOST_ACTIVE;
        }
        req.state.store(status::IN_PROG, Ordering::Release);
        let (client, planned, state, borrows) =
            (self.client.clone(), Arc::clone(&req.planned), Arc::clone(&req.state), Arc::clone(&req.borrows));
        *task = Some(self.rt().spawn(async move {
            let result = run(&client, &planned, &borrows).await;
            // Done only when no queued frame can still read the caller's memory.
            while borrows.load(Ordering::Acquire) > 0 {
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
            // The task ended without storing a result: it panicked (the panic was logged).
            return status::ERR_UNKNOWN;
        }
        s
    }

    /// releaseReqH: aborts a running request. Returns false (the request stays valid) when its
    /// payloads could not be withdrawn within the op timeout.
    pub fn release(&self, req: &Request) -> bool {
        if let Some(t) = req.task.lock().as_ref().filter(|t| !t.is_finished()) {
            t.abort();
            // A READ may be copying into the caller's memory: wait for the task to stop.
            while !t.is_finished() {
                std::thread::sleep(POLL);
            }
        }
        let deadline = Instant::now() + self.op_timeout;
        while req.borrows.load(Ordering::Acquire) > 0 {
            if Instant::now() > deadline {
                tracing::error!(
                    "MEMKV: cannot release the request yet: its data is still queued to a node that does not accept \
                     it; release it again later"
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

/// Runs one post of a request; the result is a `nixl_status_t`.
async fn run(client: &Client, planned: &Planned, borrows: &Arc<AtomicUsize>) -> i32 {
    match &planned.work {
        Work::Write(parts) => {
            let items: Vec<PutItem> = parts
                .iter()
                .map(|p| {
                    borrows.fetch_add(1, Ordering::AcqRel);
                    let view = Borrowed { ptr: p.src as *const u8, len: p.len as usize, live: Arc::clone(borrows) };
                    PutItem {
                        key: planned.keys[p.object].clone(),
                        offset: p.offset,
                        total: p.total,
                        data: Bytes::from_owner(view),
                    }
                })
                .collect();
            match client.put_batch(&items).await {
                Ok(()) => status::SUCCESS,
                Err(e) => {
                    tracing::error!(objects = planned.keys.len(), "MEMKV: WRITE failed: {e}");
                    error_status(&e)
                }
            }
        }
        Work::Read(parts) => {
            let items: Vec<GetItem> = parts
                .iter()
                .map(|p| GetItem { key: planned.keys[p.object].clone(), offset: p.offset, length: p.len })
                .collect();
            let got = match client.get_batch(&items).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::error!(objects = planned.keys.len(), "MEMKV: READ failed: {e}");
                    return error_status(&e);
                }
            };
            for (p, data) in parts.iter().zip(got) {
                let key = &planned.keys[p.object];
                let Some(data) = data else { return missing(client, key) };
                if data.len() as u64 != p.len {
                    tracing::error!(
                        key = %String::from_utf8_lossy(key),
                        "MEMKV: READ of {} bytes at offset {} returned {} bytes",
                        p.len,
                        p.offset,
                        data.len()
                    );
                    return status::ERR_MISMATCH;
                }
                let mut at = 0usize;
                for &(dst, len) in &p.dst {
                    // SAFETY: NIXL checked that [dst, dst+len) lies inside memory the caller
                    // registered, and the caller keeps it until the request completes or is
                    // released (release waits for this task to stop).
                    unsafe { std::ptr::copy_nonoverlapping(data[at..].as_ptr(), dst as *mut u8, len as usize) };
                    at += len as usize;
                }
            }
            status::SUCCESS
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
