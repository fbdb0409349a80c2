//! The client's one-sided state machines, written once against [`Provider`]: PUT = RESERVE →
//! write → COMMIT, GET = LOOKUP → read → RELEASE, a constant number of round trips per batch
//! whatever its size. Also the choice of a node's transport (`MEMKV_TRANSPORT`) and the RDMA
//! bootstrap (CONNECT).
//!
//! Safety of the local memory: a provider may still be moving bytes when a transfer is abandoned
//! (an error, a timeout, a dropped future). [`Transfer`] drops the provider then — destroying
//! its queue pair — before the caller's buffers can be released, and the session is closed.

use std::sync::Arc;

use bytes::Bytes;

use super::session::{Outgoing, Session, Targets};
use super::{Client, ClientError, Got, Node, Path, SessionError, deliver};
use crate::config::{ServerAddr, Transport, default_shm_socket};
use crate::transport::crc_copy::crc_bulk;
use crate::transport::onesided::{self, Completion, Dir, Polling, Provider, WorkRequest};
use crate::transport::rdma::QpInfo;
use crate::transport::shm::host_id;
use crate::wire::{self, CommitEntry, Header, Op, Status};

/// The provider slot of a session, held for one transfer. Dropped before the transfer is
/// finished, it drops the provider, so that no one-sided access outlives the caller's memory.
struct Transfer<'a> {
    slot: &'a mut Option<Box<dyn Provider>>,
    finished: bool,
}

impl Drop for Transfer<'_> {
    fn drop(&mut self) {
        if !self.finished {
            *self.slot = None;
        }
    }
}

/// Checks, for `MEMKV_TRANSPORT=shm`, that every server address is one of this host's.
pub(super) fn check_local(servers: &[ServerAddr]) -> Result<(), ClientError> {
    for s in servers {
        let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&s.to_string())
            .map_err(|e| ClientError::Unsupported(format!("MEMKV_TRANSPORT=shm: cannot resolve {s}: {e}")))?
            .collect();
        // An address is this host's when a socket can be bound to it.
        let local = addrs.iter().any(|a| std::net::UdpSocket::bind((a.ip(), 0)).is_ok());
        if !local {
            return Err(ClientError::Unsupported(format!(
                "MEMKV_TRANSPORT=shm cannot be honoured: server {s} is not on this host (shared memory reaches nodes on the same host only); set MEMKV_TRANSPORT=auto to use TCP or RDMA for it"
            )));
        }
    }
    Ok(())
}

impl Client {
    fn polling(&self) -> Polling {
        let r = &self.inner.cfg.rdma;
        Polling { spin: r.cq_poll, timeout: r.timeout }
    }

    /// Chooses how to reach `node` (at the first connection to it, again after a failed one) and
    /// logs the choice and the reason. Returns the session opened on the way, for the caller's
    /// slot.
    ///
    /// A node on this host is found first by the shared-memory socket a node listening on the
    /// address we dial has by default (`@memkv-<addr>`: abstract sockets are scoped to the network
    /// namespace, like the address itself); else the node is asked over TCP (NODE_INFO) which
    /// transports it offers.
    pub(super) async fn choose_path(&self, node: &Node) -> Result<(Path, Option<Arc<Session>>), ClientError> {
        let want = self.inner.cfg.transport;
        if want == Transport::Tcp {
            return Ok((Path::Tcp, None));
        }
        if self.inner.cfg.payload_mac {
            // One-sided bytes carry no payload MAC (Client::new refuses rdma/shm with it).
            tracing::info!(node = %node.name, "transport: TCP (MEMKV_PAYLOAD_MAC=true: one-sided transfers carry no payload MAC)");
            return Ok((Path::Tcp, None));
        }
        let name = &node.name;
        if matches!(want, Transport::Auto | Transport::Shm) {
            let resolved = tokio::net::lookup_host(name.as_str()).await.map(Iterator::collect).unwrap_or(Vec::new());
            for a in resolved {
                let sock = default_shm_socket(a);
                match Session::connect_shm(&sock, &self.session_params()).await {
                    Ok(s) => {
                        tracing::info!(node = %name, socket = %sock, rings = s.rings, "transport: shared memory (the node is on this host)");
                        return Ok((Path::Shm(sock), Some(s)));
                    }
                    // The node is there and refused us (wrong key, clock drift): TCP would be
                    // refused the same way.
                    Err(e @ SessionError::Refused { .. }) => return Err(self.session_failed(node, e)),
                    Err(_) => {}
                }
            }
        }
        let probe = self.open(node, &Path::Tcp, 0).await.map_err(|e| self.session_failed(node, e))?;
        let idx = self.index_of(node);
        let h = Header::request(Op::NodeInfo, 0);
        let r = self.call_on(idx, &probe, Op::NodeInfo, h, Vec::new(), Vec::new(), None).await?;
        let info: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
        let offered = &info["transports"];
        let socket = offered["shm"]["socket"].as_str().map(str::to_string);
        let same_host = offered["shm"]["host"].as_str().is_some_and(|h| Some(h) == host_id().as_deref());
        let shm_why = match (&socket, same_host) {
            _ if want == Transport::Rdma => "MEMKV_TRANSPORT=rdma".to_string(),
            (None, _) => "the node offers no shared-memory socket (--shm-socket off)".to_string(),
            (Some(_), false) => "the node is on another host".to_string(),
            (Some(sock), true) => match Session::connect_shm(sock, &self.session_params()).await {
                Ok(s) => {
                    tracing::info!(node = %name, socket = %sock, rings = s.rings, "transport: shared memory (the node is on this host)");
                    return Ok((Path::Shm(sock.clone()), Some(s)));
                }
                Err(e) => format!("cannot use the node's shared-memory socket {sock}: {e}"),
            },
        };
        if want == Transport::Shm {
            return Err(ClientError::Unsupported(format!(
                "MEMKV_TRANSPORT=shm cannot be honoured for node {name}: {shm_why}; set MEMKV_TRANSPORT=auto to fall back"
            )));
        }
        let rdma_why = match (&self.inner.rdma, offered["rdma"]["device"].as_str()) {
            (Err(why), _) => why.clone(),
            (Ok(_), None) => "the node has no RDMA device (--rdma-device)".to_string(),
            (Ok(local), Some(dev)) => {
                self.rdma_connect(node, &probe, 0).await.map_err(|e| self.session_failed(node, e))?;
                tracing::info!(node = %name, node_device = %dev, devices = ?local.device_names(), "transport: RDMA");
                return Ok((Path::Rdma, Some(probe)));
            }
        };
        if want == Transport::Rdma {
            return Err(ClientError::Unsupported(format!(
                "MEMKV_TRANSPORT=rdma cannot be honoured for node {name}: {rdma_why}; set MEMKV_TRANSPORT=auto to fall back to TCP"
            )));
        }
        if same_host && socket.is_some() {
            tracing::warn!(node = %name, shm = %shm_why, rdma = %rdma_why, "transport: TCP (shared memory failed)");
        } else {
            tracing::info!(node = %name, shm = %shm_why, rdma = %rdma_why, "transport: TCP");
        }
        Ok((Path::Tcp, Some(probe)))
    }

    fn index_of(&self, node: &Node) -> usize {
        self.inner.nodes.iter().position(|n| std::ptr::eq(n, node)).unwrap_or(0)
    }

    /// Bootstraps a queue pair for `session` (CONNECT) and attaches it.
    pub(super) async fn rdma_connect(&self, node: &Node, session: &Session, slot: usize) -> Result<(), SessionError> {
        let fail = |why: String| SessionError::Closed(Arc::from(why));
        let rdma = self.inner.rdma.as_ref().map_err(|why| fail(why.clone()))?;
        let (ours, pending) = rdma.prepare(slot).map_err(fail)?;
        let idx = self.index_of(node);
        let h = Header::request(Op::Connect, 0);
        let r = self
            .call_on(idx, session, Op::Connect, h, ours.encode(), Vec::new(), None)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if r.header.status() != Status::Ok {
            return Err(fail(format!("RDMA connect refused: {}", String::from_utf8_lossy(&r.meta))));
        }
        let theirs = QpInfo::decode(&r.meta).map_err(fail)?;
        session.attach(Box::new(pending.complete(&theirs).map_err(fail)?)).await;
        Ok(())
    }

    /// The error for a provider failure: the session is closed (its queue pair is gone).
    fn provider_failed(&self, idx: usize, session: &Session, why: &str) -> ClientError {
        let node = &self.inner.nodes[idx];
        let reason = format!("one-sided transfer failed: {why}");
        session.abort(&reason);
        node.mark_down(&reason, None);
        ClientError::Connection { node: node.name.clone(), reason }
    }

    /// One-sided PUT of one node group: `meta` is its RESERVE entry table, `data[j]` the bytes of
    /// entry `j`. Returns each entry's status.
    pub(super) async fn put_one_sided(
        &self,
        idx: usize,
        session: &Arc<Session>,
        meta: Vec<u8>,
        data: &[&[u8]],
    ) -> Result<Vec<Status>, ClientError> {
        let mut h = Header::request(Op::Reserve, 0);
        h.count = data.len() as u32;
        let r = self.call_on(idx, session, Op::Reserve, h, meta, Vec::new(), None).await?;
        if r.header.status() != Status::Ok {
            return Err(self.server_error(idx, Op::Reserve, &r));
        }
        let grants = wire::decode_grants(&r.meta, r.header.count).map_err(|e| self.protocol(idx, e.to_string()))?;
        if grants.len() != data.len() {
            return Err(self.protocol(idx, "RESERVE answer count differs from the request".into()));
        }
        let mut granted = Vec::with_capacity(grants.len());
        granted.extend((0..grants.len()).filter(|&j| grants[j].status == Status::Ok));
        let parts: Vec<(u64, u64, u64)> =
            granted.iter().map(|&j| (data[j].as_ptr() as u64, grants[j].addr, data[j].len() as u64)).collect();
        // SAFETY: `data` outlives this call and is only read.
        let done = unsafe { self.move_bytes(idx, session, Dir::Write, &parts) }.await?;
        let commits: Vec<CommitEntry> = granted
            .iter()
            .zip(&done)
            .map(|(&j, c)| CommitEntry {
                token: grants[j].token,
                crc: Some(c.crc.unwrap_or_else(|| crc_bulk(0, data[j]))),
            })
            .collect();
        let mut statuses: Vec<Status> = grants.iter().map(|g| g.status).collect();
        if commits.is_empty() {
            return Ok(statuses);
        }
        let mut meta = Vec::with_capacity(commits.len() * 13);
        wire::encode_commits(&commits, &mut meta);
        let mut h = Header::request(Op::Commit, 0);
        h.count = commits.len() as u32;
        let r = self.call_on(idx, session, Op::Commit, h, meta, Vec::new(), None).await?;
        if r.header.status() != Status::Ok {
            return Err(self.server_error(idx, Op::Commit, &r));
        }
        let committed =
            wire::decode_statuses(&r.meta, r.header.count).map_err(|e| self.protocol(idx, e.to_string()))?;
        if committed.len() != granted.len() {
            return Err(self.protocol(idx, "COMMIT answer count differs from the request".into()));
        }
        for (&j, s) in granted.iter().zip(committed) {
            statuses[j] = s;
        }
        Ok(statuses)
    }

    /// One-sided GET of one node group: `meta` is its LOOKUP (GET_BATCH) entry table of `count`
    /// entries; entry `j` goes into `targets[j]` when given (exact length), else into a new
    /// buffer. Per entry: `None` when absent.
    pub(super) async fn get_one_sided(
        &self,
        idx: usize,
        session: &Arc<Session>,
        meta: Vec<u8>,
        count: usize,
        targets: Option<&Targets>,
        keys: &(dyn Fn(usize) -> String + Sync),
    ) -> Result<Vec<Option<Got>>, ClientError> {
        let mut h = Header::request(Op::Lookup, 0);
        h.count = count as u32;
        let r = self.call_on(idx, session, Op::Lookup, h, meta, Vec::new(), None).await?;
        if r.header.status() != Status::Ok {
            return Err(self.server_error(idx, Op::Lookup, &r));
        }
        let pins = wire::decode_pins(&r.meta, r.header.count).map_err(|e| self.protocol(idx, e.to_string()))?;
        if pins.len() != count {
            return Err(self.protocol(idx, "LOOKUP answer count differs from the request".into()));
        }
        let mut pinned = Vec::with_capacity(count);
        pinned.extend((0..count).filter(|&j| pins[j].status == Status::Ok && pins[j].addr != wire::INLINE_ADDR));
        let read = self.read_pinned(idx, session, &pins, &pinned, targets, keys).await;
        // Pins are released whatever happened to the reads (a failed session releases them all),
        // without waiting for the answer: the bytes are ours already.
        if !pinned.is_empty() && session.is_alive() {
            let mut meta = Vec::with_capacity(pinned.len() * 8);
            wire::encode_tokens(pinned.iter().map(|&j| pins[j].token), &mut meta);
            let mut header = Header::request(Op::Release, 0);
            header.count = pinned.len() as u32;
            session.post(Outgoing { header, meta, payload: Vec::new(), crc_at: Vec::new() }).await;
        }
        let mut got = read?;
        let node = || self.inner.nodes[idx].name.clone();
        let mut out = Vec::with_capacity(count);
        // Small entries came inline, in entry order, in the answer's payload.
        let mut at = 0usize;
        for (j, p) in pins.iter().enumerate() {
            out.push(match p.status {
                Status::Ok if p.addr == wire::INLINE_ADDR => {
                    let end = at + p.length as usize;
                    let part = r.payload.get(at..end).map(|_| r.payload.slice(at..end)).ok_or_else(|| {
                        self.protocol(idx, "LOOKUP answer payload shorter than its inline entries".into())
                    })?;
                    at = end;
                    if crc32c::crc32c(&part) != p.crc {
                        return Err(ClientError::Checksum { node: node(), key: keys(j) });
                    }
                    Some(deliver(part, targets.map(|t| &t[j]), &node)?)
                }
                Status::Ok => got[j].take(),
                Status::NotFound => None,
                s => {
                    return Err(ClientError::Server {
                        node: node(),
                        op: Op::Lookup.name(),
                        status: s,
                        message: format!("entry for key {:?}", keys(j)),
                    });
                }
            });
        }
        if at != r.payload.len() {
            return Err(self.protocol(idx, "LOOKUP answer payload longer than its inline entries".into()));
        }
        Ok(out)
    }

    /// Reads the pinned entries one-sidedly and checks their CRC32C.
    async fn read_pinned(
        &self,
        idx: usize,
        session: &Session,
        pins: &[wire::Pinned],
        pinned: &[usize],
        targets: Option<&Targets>,
        keys: &(dyn Fn(usize) -> String + Sync),
    ) -> Result<Vec<Option<Got>>, ClientError> {
        let mut got: Vec<Option<Got>> = (0..pins.len()).map(|_| None).collect();
        if pinned.is_empty() {
            return Ok(got);
        }
        let node = || self.inner.nodes[idx].name.clone();
        let mut bufs: Vec<(Vec<u8>, usize)> = Vec::new();
        // Addresses, not pointers: the future stays `Send`.
        let mut locals: Vec<u64> = Vec::with_capacity(pinned.len());
        for &j in pinned {
            let len = pins[j].length as usize;
            let local = match targets {
                Some(t) if t[j].len() == len => {
                    // SAFETY: the target is lent to this request; only this transfer writes it.
                    unsafe { t[j].slice() }.as_mut_ptr() as u64
                }
                Some(t) => {
                    return Err(ClientError::Protocol {
                        node: node(),
                        why: format!("{len} bytes answered for a {}-byte read", t[j].len()),
                    });
                }
                None => {
                    let (mut buf, at) = self.inner.pool.take_placed(len, pins[j].addr);
                    // In bounds: `take_placed` leaves `at + len` within the capacity.
                    let local = buf.as_mut_ptr() as u64 + at as u64;
                    bufs.push((buf, at));
                    local
                }
            };
            locals.push(local);
        }
        let parts: Vec<(u64, u64, u64)> =
            pinned.iter().zip(&locals).map(|(&j, &local)| (local, pins[j].addr, pins[j].length)).collect();
        // SAFETY: the targets (lent to this request alone) and `bufs` (whose heap blocks never
        // move: they are not resized before the transfer ends) outlive this call.
        let done = unsafe { self.move_bytes(idx, session, Dir::Read, &parts) }.await?;
        let mut bufs = bufs.into_iter();
        for ((&j, &local), c) in pinned.iter().zip(&locals).zip(done) {
            let len = pins[j].length as usize;
            // SAFETY: the read completed: `len` bytes at `local` are initialised.
            let bytes = unsafe { std::slice::from_raw_parts(local as *const u8, len) };
            if c.crc.unwrap_or_else(|| crc_bulk(0, bytes)) != pins[j].crc {
                return Err(ClientError::Checksum { node: node(), key: keys(j) });
            }
            got[j] = Some(match targets {
                Some(_) => Got::Placed,
                None => {
                    let (mut b, at) = bufs.next().unwrap_or_default();
                    // SAFETY: the read filled the `len` bytes from `at`, within the capacity;
                    // the `at` before them are zeroes (both from `take_placed`).
                    unsafe { b.set_len(at + len) };
                    Got::Bytes(self.inner.pool.freeze_at(b, at))
                }
            });
        }
        Ok(got)
    }

    /// Moves the bytes of each `(local address, arena offset, length)` one-sidedly in `dir` on the
    /// session's provider (locked for this transfer only; the control steps around it run
    /// unlocked). Returns each part's completion, all successful.
    ///
    /// # Safety
    /// Every local range must stay valid until this future completes or is dropped: readable for
    /// a write, writable and used by nobody else for a read. (A transfer abandoned half-way
    /// drops the provider, and with it its queue pair, before this future is gone.)
    async unsafe fn move_bytes(
        &self,
        idx: usize,
        session: &Session,
        dir: Dir,
        parts: &[(u64, u64, u64)],
    ) -> Result<Vec<Completion>, ClientError> {
        let mut slot = session.provider().await;
        let mut t = Transfer { slot: &mut slot, finished: false };
        let p = t.slot.as_deref_mut().ok_or_else(|| self.provider_failed(idx, session, "no provider"))?;
        let kind = p.kind();
        let mut wrs = Vec::with_capacity(parts.len());
        for &(local, remote, len) in parts {
            let lkey = p.register(local, len, true).map_err(|e| self.provider_failed(idx, session, &e.0))?;
            wrs.push(WorkRequest { id: 0, dir, local, lkey, remote, len, host: true });
        }
        // SAFETY: this function's contract; `t` drops the provider if the run is abandoned.
        let done = unsafe { onesided::run(p, &mut wrs, self.polling()) }
            .await
            .map_err(|e| self.provider_failed(idx, session, &format!("{kind} {}", e.0)))?;
        t.finished = true;
        p.unregister_all();
        if let Some(Err(why)) = done.iter().map(|c| &c.result).find(|r| r.is_err()) {
            return Err(self.provider_failed(idx, session, why));
        }
        Ok(done)
    }

    fn protocol(&self, idx: usize, why: String) -> ClientError {
        ClientError::Protocol { node: self.inner.nodes[idx].name.clone(), why }
    }

    /// The RESERVE entry table of one PUT (whole or ranged): the single-key API on one-sided
    /// sessions.
    pub(super) fn one_entry(key: &[u8], offset: u64, value: &Bytes, total: u64) -> Vec<u8> {
        let mut meta = Vec::new();
        let e = wire::BatchPutEntry { key, offset, length: value.len() as u64, total, crc: 0 };
        wire::encode_put_entries(std::slice::from_ref(&e), &mut meta);
        meta
    }
}
