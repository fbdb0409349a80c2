//! The MEMKV backend engine: registrations, transfer requests and queries on top of the memkv
//! client, run on the engine's own tokio runtime so that NIXL's calls never block on the network
//! (except `queryMem`, which NIXL defines as synchronous).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use memkv::Client;
use memkv::client::{ClientError, GetItem, Loans, PutItem};
use memkv::config::{ClientConfig, Sources};
use memkv::wire::Status;
use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::ffi::{Desc, mem, op, status};
use crate::plan::{self, Pair, ReadPart, WritePart};

/// How often a waiting caller re-checks a finishing task or outstanding loans.
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
    /// The parts, and the client's entries for them (built once: they hold no memory).
    Read(Vec<ReadPart>, Vec<GetItem>),
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
    /// The client's views of the caller's memory (queued payloads, answers being received).
    loans: Loans,
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
            plan::plan_read(&pairs).map(|parts| {
                let items = parts
                    .iter()
                    .map(|p| GetItem { key: keys[p.object].clone(), offset: p.offset, length: p.len })
                    .collect();
                Work::Read(parts, items)
            })
        }
        .map_err(|e| fail(status::ERR_INVALID_PARAM, e.0))?;
        Ok(Box::new(Request {
            planned: Arc::new(Planned { keys, work }),
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
        *task = Some(self.rt().spawn(async move {
            let result = run(&client, &planned, &loans).await;
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
    match &planned.work {
        Work::Write(parts) => {
            let items: Vec<PutItem> = parts
                .iter()
                .map(|p| PutItem {
                    key: planned.keys[p.object].clone(),
                    offset: p.offset,
                    total: p.total,
                    // SAFETY: NIXL checked that the range lies in memory the caller registered,
                    // and the caller keeps it unchanged until the request is complete or
                    // released; both wait until `loans` has nothing outstanding.
                    data: unsafe { loans.bytes(p.src as *const u8, p.len as usize) },
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
        Work::Read(parts, items) => {
            // SAFETY: as for writes; the caller does not touch the memory until the request is
            // complete or released.
            let targets = parts.iter().map(|p| unsafe { loans.target(p.dst as *mut u8, p.len as usize) }).collect();
            match client.get_batch_into(items, targets).await {
                Ok(found) => match parts.iter().zip(found).find(|(_, f)| !f) {
                    Some((p, _)) => missing(client, &planned.keys[p.object]),
                    None => status::SUCCESS,
                },
                Err(e) => {
                    tracing::error!(objects = planned.keys.len(), "MEMKV: READ failed: {e}");
                    error_status(&e)
                }
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
