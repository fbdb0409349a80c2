//! The RDMA verbs provider: RC queue pairs doing RDMA WRITE/READ straight into a node's arena.
//!
//! A node ([`NodeRdma`]) opens one NIC, registers its whole arena once (remote read + write) and,
//! per CONNECT, creates an RC queue pair towards the client ([`NodeRdma::accept`]); it never posts
//! a work request. A client ([`ClientRdma`]) spreads its connections over its NICs, creates its
//! queue pair first ([`ClientRdma::prepare`]), sends the resulting [`QpInfo`] in CONNECT, and
//! finishes with the node's answer ([`PendingQp::complete`]) into a [`VerbsProvider`], which the
//! one-sided transfer loop drives. libibverbs is opened at run time by `sideway`, so all of this
//! builds and runs on hosts without rdma-core, where every entry point fails with
//! "RDMA is unavailable".
//!
//! Routing: one port (1) per NIC. On Ethernet (RoCE) every packet carries a GRH from the GID
//! `MEMKV_RDMA_GID_INDEX` names, or else the first RoCE v2 IPv4-mapped GID of the port; on
//! InfiniBand packets are LID-routed, with a GRH only when `MEMKV_RDMA_GID_INDEX` is set.
//!
//! **Never run on hardware so far** (the development host has no RDMA device and no InfiniBand
//! kernel support, and no RDMA host has run it yet): everything past `DeviceList::new()` —
//! [`open_devices`] after the device list, [`open_dev`], [`roce_v2_gid`], [`ClientRdma::prefer`],
//! [`NodeRdma::open`]'s registration and CQ, [`NodeRdma::accept`], [`ClientRdma::prepare`],
//! [`PendingQp::complete`], [`create_qp`], [`connect`], and [`VerbsProvider`]'s `register`, `post`
//! and `poll`. Here only the
//! [`QpInfo`] codec, the pure helpers ([`covering`], [`check_bounds`], [`status_name`]) and the
//! clean failure without RDMA are tested. On a host with an RDMA NIC (port 1 active),
//! `cargo test --lib transport::rdma` also runs a one-NIC loopback WRITE + READ through all of
//! the above; the client ↔ node path end to end is `memkv-server --rdma-device <nic>` with
//! `MEMKV_TRANSPORT=rdma memkv bench` on an RDMA host (docs/rdma.md).

use std::collections::{BTreeMap, VecDeque};
use std::error::Error;
use std::num::NonZeroU32;
use std::sync::Arc;

use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::address::{AddressHandleAttribute, Gid, GidType};
use sideway::ibverbs::completion::{BasicCompletionQueue, PollCompletionQueueError};
use sideway::ibverbs::device::{Device, DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, Mtu};
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, PostSendGuard, QueuePair, QueuePairAttribute, QueuePairState, SetScatterGatherEntry,
    WorkRequestFlags,
};

use super::onesided::{Completion, Dir, Provider, ProviderError, WorkRequest};
use crate::config::RdmaConfig;

/// The port every queue pair uses.
const PORT: u8 = 1;
/// `IBV_PORT_ACTIVE`.
const PORT_ACTIVE: u32 = 4;
/// `IBV_LINK_LAYER_ETHERNET` (RoCE); anything else is InfiniBand.
const LINK_LAYER_ETHERNET: u8 = 2;
/// Work completions taken per poll.
const POLL_BATCH: usize = 64;
/// Largest RDMA message (2 GiB, the InfiniBand limit).
const MAX_MESSAGE: u64 = 1 << 31;
/// Outstanding RDMA READs per queue pair, either way, before the device's own limits.
const RD_ATOMIC: i32 = 16;
/// Local ACK timeout exponent: 4.096 µs × 2^14 ≈ 67 ms per try.
const ACK_TIMEOUT: u8 = 14;
/// Transport and RNR retries (7 = the maximum; 7 RNR retries means "infinite").
const RETRIES: u8 = 7;
/// Minimal RNR NAK timer code (12 = 0.64 ms).
const MIN_RNR_TIMER: u8 = 12;
/// GRH hop limit.
const HOP_LIMIT: u8 = 64;

/// One side's queue pair, as exchanged in the CONNECT op over the authenticated session. The
/// client sends its own with the arena fields 0; the node answers with its queue pair and arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QpInfo {
    /// Queue pair number (24 bits).
    pub(crate) qpn: u32,
    /// First packet sequence number of the sender (24 bits).
    pub(crate) psn: u32,
    /// Port LID (InfiniBand; 0 on RoCE).
    pub(crate) lid: u16,
    /// Port GID the sender addresses packets from.
    pub(crate) gid: [u8; 16],
    /// Active MTU of the port, as an `ibv_mtu` value (1 = 256 … 5 = 4096).
    pub(crate) mtu: u8,
    /// Address of the node's arena in the node's address space (0 from a client).
    pub(crate) arena_addr: u64,
    /// Length of the node's arena (0 from a client).
    pub(crate) arena_len: u64,
    /// Remote key of the node's arena (0 from a client).
    pub(crate) rkey: u32,
}

impl QpInfo {
    /// Layout version, the first byte of [`encode`](Self::encode).
    const VERSION: u8 = 1;
    /// Encoded length of layout version 1.
    const LEN: usize = 48;

    /// Version 1: `version u8, mtu u8, lid u16, qpn u32, psn u32, gid [16], arena_addr u64,
    /// arena_len u64, rkey u32`, little-endian, 48 bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::LEN);
        b.extend_from_slice(&[Self::VERSION, self.mtu]);
        b.extend_from_slice(&self.lid.to_le_bytes());
        b.extend_from_slice(&self.qpn.to_le_bytes());
        b.extend_from_slice(&self.psn.to_le_bytes());
        b.extend_from_slice(&self.gid);
        b.extend_from_slice(&self.arena_addr.to_le_bytes());
        b.extend_from_slice(&self.arena_len.to_le_bytes());
        b.extend_from_slice(&self.rkey.to_le_bytes());
        b
    }

    /// Parses [`encode`](Self::encode)'s output; rejects other versions and lengths, and fields
    /// out of their range.
    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        match b.first() {
            None => return Err("empty RDMA queue-pair info".into()),
            Some(&v) if v != Self::VERSION => {
                return Err(format!("RDMA queue-pair info has layout version {v}; this build reads version 1"));
            }
            _ if b.len() != Self::LEN => {
                return Err(format!("RDMA queue-pair info is {} bytes; version 1 is {}", b.len(), Self::LEN));
            }
            _ => {}
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let info = Self {
            mtu: b[1],
            lid: u16_at(2),
            qpn: u32_at(4),
            psn: u32_at(8),
            gid: b[12..28].try_into().expect("16 bytes"),
            arena_addr: u64_at(28),
            arena_len: u64_at(36),
            rkey: u32_at(44),
        };
        if !(1..=5).contains(&info.mtu) {
            return Err(format!("RDMA queue-pair info has MTU code {}; expected 1..=5", info.mtu));
        }
        if info.qpn > 0xFF_FFFF || info.psn > 0xFF_FFFF {
            return Err(format!("RDMA queue-pair info has QPN {:#x} / PSN {:#x}; both are 24-bit", info.qpn, info.psn));
        }
        Ok(info)
    }
}

/// An error and its sources, joined (sideway's errors keep the OS error in their sources).
fn why(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        next = c.source();
    }
    s
}

/// Port 1 of an opened NIC: what a queue pair needs to address and be addressed.
#[derive(Debug, Clone, Copy)]
struct Port {
    lid: u16,
    /// `ibv_mtu` code of the active MTU.
    mtu: u8,
    gid: [u8; 16],
    gid_index: u8,
    /// Whether packets carry a GRH (always on RoCE).
    grh: bool,
    /// Outstanding RDMA READs this side may issue (initiator depth).
    rd_atomic: u8,
    /// Outstanding RDMA READs this side serves (responder resources).
    dest_rd_atomic: u8,
    /// Device limits on work requests per queue and entries per CQ.
    max_qp_wr: u32,
    max_cqe: u32,
}

/// An opened NIC with one protection domain.
#[derive(Debug)]
struct Dev {
    name: String,
    ctx: Arc<DeviceContext>,
    pd: Arc<ProtectionDomain>,
    port: Port,
}

/// The first RoCE v2 GID of `PORT` holding an IPv4-mapped address (`::ffff:a.b.c.d`).
fn roce_v2_gid(ctx: &DeviceContext, name: &str, table_len: i32) -> Result<u8, String> {
    (0..table_len.clamp(0, 256) as u32)
        .find(|&i| {
            ctx.query_gid_ex(PORT, i).is_ok_and(|e| {
                let g = e.gid().raw;
                e.gid_type() == GidType::RoceV2 && g[..10] == [0; 10] && g[10..12] == [0xff, 0xff]
            })
        })
        .map(|i| i as u8)
        .ok_or_else(|| {
            format!(
                "port {PORT} of {name} has no RoCE v2 GID with an IPv4 address (is the interface up, with an IPv4 \
                 address?); set MEMKV_RDMA_GID_INDEX to the entry to use"
            )
        })
}

/// Opens `d`, checks its port 1 and picks the GID, and allocates a protection domain.
fn open_dev(d: &Device<'_>, name: &str, cfg: &RdmaConfig) -> Result<Dev, String> {
    let ctx = d.open().map_err(|e| format!("cannot open RDMA device {name}: {}", why(&e)))?;
    let attr = ctx.query_device().map_err(|e| format!("cannot query RDMA device {name}: {}", why(&e)))?.attr.orig_attr;
    let p = ctx.query_port(PORT).map_err(|e| format!("cannot query port {PORT} of {name}: {}", why(&e)))?.attr;
    if p.state != PORT_ACTIVE {
        return Err(format!("port {PORT} of {name} is not active (ibv_port_state {})", p.state));
    }
    let mtu = u8::try_from(p.active_mtu)
        .ok()
        .filter(|m| (1..=5).contains(m))
        .ok_or_else(|| format!("port {PORT} of {name} reports an unknown active MTU code {}", p.active_mtu))?;
    let ethernet = p.link_layer == LINK_LAYER_ETHERNET;
    let (gid_index, grh) = match cfg.gid_index {
        Some(i) => (i, true),
        None if ethernet => (roce_v2_gid(&ctx, name, p.gid_tbl_len)?, true),
        None => (0, false),
    };
    let gid = match ctx.query_gid(PORT, gid_index.into()) {
        Ok(g) => g.raw,
        Err(_) if !grh => [0; 16],
        Err(e) => return Err(format!("cannot read GID {gid_index} of port {PORT} of {name}: {}", why(&e))),
    };
    if grh && gid == [0; 16] {
        return Err(format!("GID {gid_index} of port {PORT} of {name} is empty (MEMKV_RDMA_GID_INDEX)"));
    }
    if !grh && p.lid == 0 {
        return Err(format!("port {PORT} of {name} has no LID (is a subnet manager running?)"));
    }
    let pd = ctx.alloc_pd().map_err(|e| format!("cannot allocate a protection domain on {name}: {}", why(&e)))?;
    let port = Port {
        lid: p.lid,
        mtu,
        gid,
        gid_index,
        grh,
        rd_atomic: attr.max_qp_init_rd_atom.clamp(0, RD_ATOMIC) as u8,
        dest_rd_atomic: attr.max_qp_rd_atom.clamp(0, RD_ATOMIC) as u8,
        max_qp_wr: attr.max_qp_wr.max(0) as u32,
        max_cqe: attr.max_cqe.max(0) as u32,
    };
    Ok(Dev { name: name.to_string(), ctx, pd, port })
}

/// Opens the NICs named in `wanted` (every usable NIC when empty; then one that fails its checks
/// is skipped unless none passes). `setting` names where `wanted` came from, for the error.
fn open_devices(wanted: &[String], setting: &str, cfg: &RdmaConfig) -> Result<Vec<Arc<Dev>>, String> {
    let list = DeviceList::new().map_err(|e| format!("RDMA is unavailable on this host ({})", why(&e)))?;
    let found: Vec<_> = list.iter().collect();
    let names: Vec<String> = found.iter().map(|d| d.name()).collect();
    if found.is_empty() {
        return Err("RDMA is unavailable on this host (no RDMA device)".into());
    }
    if let Some(missing) = wanted.iter().find(|w| !names.contains(w)) {
        return Err(format!("{setting} names {missing:?}, which this host does not have; it has {}", names.join(", ")));
    }
    let (mut out, mut failed) = (Vec::new(), Vec::new());
    for (d, name) in found.iter().zip(&names) {
        if !wanted.is_empty() && !wanted.contains(name) {
            continue;
        }
        match open_dev(d, name, cfg) {
            Ok(dev) => out.push(Arc::new(dev)),
            Err(e) if wanted.is_empty() => failed.push(e),
            Err(e) => return Err(e),
        }
    }
    if out.is_empty() {
        return Err(format!("no usable RDMA device: {}", failed.join("; ")));
    }
    Ok(out)
}

/// A fresh 24-bit packet sequence number.
fn random_psn() -> Result<u32, String> {
    getrandom::u32().map(|r| r & 0xFF_FFFF).map_err(|e| format!("OS random generator failed: {e}"))
}

/// Our side of a queue pair on `dev`.
fn local_info(dev: &Dev, qp: &BasicQueuePair, psn: u32) -> QpInfo {
    let p = &dev.port;
    QpInfo { qpn: qp.qp_number(), psn, lid: p.lid, gid: p.gid, mtu: p.mtu, arena_addr: 0, arena_len: 0, rkey: 0 }
}

/// Creates an RC queue pair on `dev` whose both queues complete into `cq`, and moves it to INIT
/// with the remote `access` it grants.
fn create_qp(
    dev: &Dev,
    cq: &Arc<BasicCompletionQueue>,
    max_send_wr: u32,
    access: AccessFlags,
) -> Result<BasicQueuePair, String> {
    let mut qp = dev
        .pd
        .create_qp_builder()
        .setup_max_send_wr(max_send_wr)
        .setup_max_recv_wr(1)
        .setup_max_send_sge(1)
        .setup_max_recv_sge(1)
        .setup_send_cq(Arc::clone(cq))
        .setup_recv_cq(Arc::clone(cq))
        .build()
        .map_err(|e| format!("cannot create an RC queue pair on {}: {}", dev.name, why(&e)))?;
    let mut a = QueuePairAttribute::new();
    a.setup_state(QueuePairState::Init).setup_pkey_index(0).setup_port(PORT).setup_access_flags(access);
    qp.modify(&a).map_err(|e| format!("queue pair on {} to INIT: {}", dev.name, why(&e)))?;
    Ok(qp)
}

/// Moves `qp` (in INIT) to RTR towards `remote`, then to RTS starting at `psn`.
fn connect(qp: &mut BasicQueuePair, dev: &Dev, cfg: &RdmaConfig, psn: u32, remote: &QpInfo) -> Result<(), String> {
    let p = &dev.port;
    let mut ah = AddressHandleAttribute::new();
    ah.setup_dest_lid(remote.lid).setup_port(PORT).setup_service_level(cfg.service_level);
    if p.grh {
        ah.setup_grh(&Gid { raw: remote.gid }, 0, p.gid_index, HOP_LIMIT, cfg.traffic_class);
    }
    let mut a = QueuePairAttribute::new();
    a.setup_state(QueuePairState::ReadyToReceive)
        .setup_path_mtu(Mtu::from(u32::from(p.mtu.min(remote.mtu))))
        .setup_dest_qp_num(remote.qpn)
        .setup_rq_psn(remote.psn)
        .setup_max_dest_read_atomic(p.dest_rd_atomic)
        .setup_min_rnr_timer(MIN_RNR_TIMER)
        .setup_address_vector(&ah);
    qp.modify(&a)
        .map_err(|e| format!("queue pair on {} to RTR (remote QPN {:#x}): {}", dev.name, remote.qpn, why(&e)))?;
    let mut a = QueuePairAttribute::new();
    a.setup_state(QueuePairState::ReadyToSend)
        .setup_sq_psn(psn)
        .setup_timeout(ACK_TIMEOUT)
        .setup_retry_cnt(RETRIES)
        .setup_rnr_retry(RETRIES)
        .setup_max_read_atomic(p.rd_atomic);
    qp.modify(&a).map_err(|e| format!("queue pair on {} to RTS: {}", dev.name, why(&e)))
}

/// A node's NIC with its arena registered: accepts queue pairs from clients.
#[derive(Debug)]
pub(crate) struct NodeRdma {
    dev: Arc<Dev>,
    /// Shared by every accepted queue pair; nothing ever completes into it (the node posts no
    /// work requests), but verbs wants one.
    cq: Arc<BasicCompletionQueue>,
    arena: Arc<MemoryRegion>,
    cfg: RdmaConfig,
}

impl NodeRdma {
    /// Opens `device` and registers `[arena_base, arena_base + arena_len)` for remote read and
    /// write. The arena must stay mapped while this lives (the registration ends with it).
    pub(crate) fn open(device: &str, arena_base: *mut u8, arena_len: u64, cfg: RdmaConfig) -> Result<Self, String> {
        let dev = open_devices(&[device.to_string()], "MEMKV_RDMA_DEVICE", &cfg)?.remove(0);
        let access = AccessFlags::LocalWrite | AccessFlags::RemoteWrite | AccessFlags::RemoteRead;
        // SAFETY: the caller keeps the arena mapped for as long as this `NodeRdma` (and so the
        // MR) lives; the NIC writes only inside the registered range, which the node already
        // treats as memory that clients write into behind its back.
        let arena = unsafe { dev.pd.reg_mr(arena_base as usize, arena_len as usize, access) }
            .map_err(|e| format!("ibv_reg_mr of the {arena_len}-byte arena on {device}: {}", why(&e)))?;
        let cq = dev
            .ctx
            .create_cq_builder()
            .setup_cqe(16)
            .build()
            .map_err(|e| format!("cannot create a completion queue on {device}: {}", why(&e)))?;
        Ok(Self { dev, cq, arena, cfg })
    }

    /// Creates a queue pair connected to `client`'s. Returns our info (with the arena's address,
    /// length and remote key) for the client, and the queue pair, destroyed when dropped.
    pub(crate) fn accept(&self, client: &QpInfo) -> Result<(QpInfo, NodeQp), String> {
        let mut qp = create_qp(&self.dev, &self.cq, 1, AccessFlags::RemoteWrite | AccessFlags::RemoteRead)?;
        let psn = random_psn()?;
        connect(&mut qp, &self.dev, &self.cfg, psn, client)?;
        let info = QpInfo {
            arena_addr: self.arena.get_ptr() as u64,
            arena_len: self.arena.region_len() as u64,
            rkey: self.arena.rkey(),
            ..local_info(&self.dev, &qp, psn)
        };
        Ok((info, NodeQp { _qp: qp }))
    }
}

/// A node's end of one client's queue pair; dropping it destroys the queue pair, after which the
/// client's transfers fail.
#[derive(Debug)]
pub(crate) struct NodeQp {
    _qp: BasicQueuePair,
}

/// A client's NICs.
#[derive(Debug)]
pub(crate) struct ClientRdma {
    devs: Vec<Arc<Dev>>,
    /// Indices into `devs` that connections cycle through: the GPU's closest NIC only, when
    /// [`prefer`](Self::prefer) named one; else every NIC.
    order: Vec<usize>,
    cfg: RdmaConfig,
}

impl ClientRdma {
    /// Opens the NICs named in `devices` (every usable one when empty).
    pub(crate) fn open(devices: &[String], cfg: RdmaConfig) -> Result<Self, String> {
        let devs = open_devices(devices, "MEMKV_RDMA_DEVICES", &cfg)?;
        if let Some(d) = devs.iter().find(|d| cfg.queue_depth > d.port.max_qp_wr.min(d.port.max_cqe)) {
            return Err(format!(
                "MEMKV_RDMA_QUEUE_DEPTH is {}; {} allows at most {}",
                cfg.queue_depth,
                d.name,
                d.port.max_qp_wr.min(d.port.max_cqe)
            ));
        }
        let order = (0..devs.len()).collect();
        Ok(Self { devs, order, cfg })
    }

    /// The opened NICs' names, in the order connections are spread over them.
    pub(crate) fn device_names(&self) -> Vec<String> {
        self.devs.iter().map(|d| d.name.clone()).collect()
    }

    /// Puts every connection on NIC `name` (the one the PCIe affinity map picks for this
    /// process's GPU); an unknown name changes nothing.
    pub(crate) fn prefer(&mut self, name: &str) {
        if let Some(i) = self.devs.iter().position(|d| d.name == name) {
            self.order = vec![i];
        }
    }

    /// Creates a queue pair (in INIT) on the `slot`-th NIC of the connection order and returns
    /// its info for CONNECT.
    pub(crate) fn prepare(&self, slot: usize) -> Result<(QpInfo, PendingQp), String> {
        let dev = Arc::clone(&self.devs[self.order[slot % self.order.len()]]);
        let depth = self.cfg.queue_depth.max(1);
        let mut cq = dev
            .ctx
            .create_cq_builder()
            .setup_cqe(depth)
            .build()
            .map_err(|e| format!("cannot create a completion queue on {}: {}", dev.name, why(&e)))?;
        if let Some(c) = Arc::get_mut(&mut cq) {
            c.setup_poll_batch(NonZeroU32::new(POLL_BATCH as u32).expect("nonzero"));
        }
        // No remote access: the node never reads or writes the client's memory.
        let qp = create_qp(&dev, &cq, depth, AccessFlags::none())?;
        let psn = random_psn()?;
        let info = local_info(&dev, &qp, psn);
        Ok((info, PendingQp { dev, qp, cq, psn, cfg: self.cfg }))
    }
}

/// A client queue pair waiting for the node's answer to CONNECT.
#[derive(Debug)]
pub(crate) struct PendingQp {
    dev: Arc<Dev>,
    qp: BasicQueuePair,
    cq: Arc<BasicCompletionQueue>,
    psn: u32,
    cfg: RdmaConfig,
}

impl PendingQp {
    /// Connects to the node's queue pair and arena.
    pub(crate) fn complete(mut self, node: &QpInfo) -> Result<VerbsProvider, String> {
        if node.arena_addr.checked_add(node.arena_len).is_none() {
            return Err(format!("node announced an arena at {:#x} of {} bytes", node.arena_addr, node.arena_len));
        }
        connect(&mut self.qp, &self.dev, &self.cfg, self.psn, node)?;
        Ok(VerbsProvider {
            qp: self.qp,
            cq: self.cq,
            mrs: BTreeMap::new(),
            inflight: VecDeque::new(),
            dev: self.dev,
            node: *node,
            depth: self.cfg.queue_depth.max(1) as usize,
        })
    }
}

/// A connected RC queue pair towards one node's arena.
#[derive(Debug)]
pub(crate) struct VerbsProvider {
    /// First field, so it is destroyed (its work requests stopped) before the MRs they name.
    qp: BasicQueuePair,
    cq: Arc<BasicCompletionQueue>,
    /// Registrations of the current transfer: start → (end, MR). Dropped when it ends
    /// (`unregister_all`): the caller's buffers may be freed and their addresses reused.
    mrs: BTreeMap<u64, (u64, Arc<MemoryRegion>)>,
    /// Posted, not yet completed: (wr_id, direction), in post order (an RC send queue completes
    /// in order).
    inflight: VecDeque<(u64, Dir)>,
    dev: Arc<Dev>,
    node: QpInfo,
    depth: usize,
}

/// The value of the registration in `mrs` covering `[addr, end)`, if any.
fn covering<T>(mrs: &BTreeMap<u64, (u64, T)>, addr: u64, end: u64) -> Option<&T> {
    mrs.range(..=addr).rev().find(|(_, (e, _))| *e >= end).map(|(_, (_, v))| v)
}

/// Checks that `wr` stays within an arena of `arena_len` bytes and one RDMA message.
fn check_bounds(wr: &WorkRequest, arena_len: u64) -> Result<(), ProviderError> {
    if wr.remote.checked_add(wr.len).is_none_or(|end| end > arena_len) {
        return Err(ProviderError(format!(
            "work request {} covers arena bytes {}..+{} past the node's arena of {arena_len}",
            wr.id, wr.remote, wr.len
        )));
    }
    if wr.len > MAX_MESSAGE {
        return Err(ProviderError(format!("work request {} moves {} bytes; RDMA allows {MAX_MESSAGE}", wr.id, wr.len)));
    }
    Ok(())
}

/// The `ibv_wc_status` name of `status`.
fn status_name(status: u32) -> String {
    const NAMES: [&str; 24] = [
        "IBV_WC_SUCCESS",
        "IBV_WC_LOC_LEN_ERR",
        "IBV_WC_LOC_QP_OP_ERR",
        "IBV_WC_LOC_EEC_OP_ERR",
        "IBV_WC_LOC_PROT_ERR",
        "IBV_WC_WR_FLUSH_ERR",
        "IBV_WC_MW_BIND_ERR",
        "IBV_WC_BAD_RESP_ERR",
        "IBV_WC_LOC_ACCESS_ERR",
        "IBV_WC_REM_INV_REQ_ERR",
        "IBV_WC_REM_ACCESS_ERR",
        "IBV_WC_REM_OP_ERR",
        "IBV_WC_RETRY_EXC_ERR",
        "IBV_WC_RNR_RETRY_EXC_ERR",
        "IBV_WC_LOC_RDD_VIOL_ERR",
        "IBV_WC_REM_INV_RD_REQ_ERR",
        "IBV_WC_REM_ABORT_ERR",
        "IBV_WC_INV_EECN_ERR",
        "IBV_WC_INV_EEC_STATE_ERR",
        "IBV_WC_FATAL_ERR",
        "IBV_WC_RESP_TIMEOUT_ERR",
        "IBV_WC_GENERAL_ERR",
        "IBV_WC_TM_ERR",
        "IBV_WC_TM_RNDV_INCOMPLETE",
    ];
    NAMES.get(status as usize).map_or_else(|| format!("work completion status {status}"), |n| (*n).to_string())
}

impl Provider for VerbsProvider {
    fn kind(&self) -> &'static str {
        "rdma"
    }

    fn register(&mut self, addr: u64, len: u64, host: bool) -> Result<u32, ProviderError> {
        let end = addr.checked_add(len).ok_or_else(|| ProviderError(format!("{len} bytes at {addr:#x} wrap")))?;
        if let Some(mr) = covering(&self.mrs, addr, end) {
            return Ok(mr.lkey());
        }
        // SAFETY: `ibv_reg_mr` only pins the pages (or fails, for unmapped ones); the NIC writes
        // into them only for a READ passed to `post`, whose contract keeps the range valid and
        // unaliased until the completion is polled.
        let mr = unsafe { self.dev.pd.reg_mr(addr as usize, len as usize, AccessFlags::LocalWrite) }.map_err(|e| {
            let (what, hint) =
                if host { ("host", "") } else { ("GPU", "; GPU memory registers only where nvidia-peermem is loaded") };
            ProviderError(format!(
                "ibv_reg_mr of {len} bytes of {what} memory at {addr:#x} on {}: {}{hint}",
                self.dev.name,
                why(&e)
            ))
        })?;
        let lkey = mr.lkey();
        self.mrs.insert(addr, (end, mr));
        Ok(lkey)
    }

    unsafe fn post(&mut self, wrs: &[WorkRequest]) -> Result<(), ProviderError> {
        if wrs.is_empty() {
            return Ok(());
        }
        if self.inflight.len() + wrs.len() > self.depth {
            return Err(ProviderError(format!(
                "{} work requests posted on top of {} in flight; the queue pair holds {}",
                wrs.len(),
                self.inflight.len(),
                self.depth
            )));
        }
        for w in wrs {
            check_bounds(w, self.node.arena_len)?;
        }
        let mut guard = self.qp.start_post_send();
        for w in wrs {
            let remote = self.node.arena_addr + w.remote;
            let h = guard.construct_wr(w.id, WorkRequestFlags::Signaled);
            let h = match w.dir {
                Dir::Write => h.setup_write(self.node.rkey, remote),
                Dir::Read => h.setup_read(self.node.rkey, remote),
            };
            // SAFETY: `post`'s contract keeps `[local, local + len)` valid (and, for a READ,
            // unaliased) until the completion is polled; `lkey` came from `register`, whose MR
            // this provider keeps until after the queue pair is destroyed; `len` ≤ 2^31 (checked).
            unsafe { h.setup_sge(w.lkey, w.local, w.len as u32) };
        }
        guard.post().map_err(|e| ProviderError(format!("ibv_post_send on {}: {}", self.dev.name, why(&e))))?;
        self.inflight.extend(wrs.iter().map(|w| (w.id, w.dir)));
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), ProviderError> {
        let poller = match self.cq.start_poll() {
            Ok(p) => p,
            Err(PollCompletionQueueError::CompletionQueueEmpty) => return Ok(()),
            Err(e) => return Err(ProviderError(format!("ibv_poll_cq on {}: {}", self.dev.name, why(&e)))),
        };
        for wc in poller.take(POLL_BATCH) {
            let id = wc.wr_id();
            let dir = self.inflight.iter().position(|&(i, _)| i == id).and_then(|i| self.inflight.remove(i));
            let result = if wc.status() == 0 {
                Ok(())
            } else {
                let op = match dir {
                    Some((_, Dir::Write)) => "WRITE",
                    Some((_, Dir::Read)) => "READ",
                    None => "operation",
                };
                Err(format!("RDMA {op} failed with {} (vendor error {})", status_name(wc.status()), wc.vendor_err()))
            };
            out.push(Completion { id, result, crc: None });
        }
        Ok(())
    }

    fn unregister_all(&mut self) {
        self.mrs.clear();
    }

    fn max_outstanding(&self) -> usize {
        self.depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info() -> QpInfo {
        QpInfo {
            qpn: 0x12_3456,
            psn: 0xab_cdef,
            lid: 7,
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1],
            mtu: 5,
            arena_addr: 0x7f00_0000_0000,
            arena_len: 1 << 30,
            rkey: 0xdead_beef,
        }
    }

    #[test]
    fn qp_info_has_a_fixed_versioned_layout() {
        let b = info().encode();
        assert_eq!(b.len(), 48);
        assert_eq!((b[0], b[1]), (1, 5));
        assert_eq!(&b[44..], &0xdead_beef_u32.to_le_bytes());
        assert_eq!(QpInfo::decode(&b), Ok(info()));
    }

    #[test]
    fn qp_info_rejects_other_versions_lengths_and_ranges() {
        let b = info().encode();
        assert!(QpInfo::decode(&[]).unwrap_err().contains("empty"));
        let e = QpInfo::decode(&b[..47]).unwrap_err();
        assert!(e.contains("47 bytes") && e.contains("48"), "{e}");
        let mut v2 = b.clone();
        v2[0] = 2;
        assert!(QpInfo::decode(&v2).unwrap_err().contains("version 2"));
        let mut mtu = b.clone();
        mtu[1] = 6;
        assert!(QpInfo::decode(&mtu).unwrap_err().contains("MTU"));
        let mut qpn = b.clone();
        qpn[7] = 1;
        assert!(QpInfo::decode(&qpn).unwrap_err().contains("24-bit"));
    }

    proptest! {
        #[test]
        fn qp_info_round_trips(
            qpn in 0u32..1 << 24, psn in 0u32..1 << 24, lid: u16, gid: [u8; 16], mtu in 1u8..=5,
            arena_addr: u64, arena_len: u64, rkey: u32,
        ) {
            let i = QpInfo { qpn, psn, lid, gid, mtu, arena_addr, arena_len, rkey };
            prop_assert_eq!(QpInfo::decode(&i.encode()), Ok(i));
        }

        #[test]
        fn garbage_is_rejected_or_reencodes_identically(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(i) = QpInfo::decode(&b) {
                prop_assert_eq!(i.encode(), b);
            }
        }
    }

    #[test]
    fn the_covering_registration_is_found_among_overlapping_ones() {
        let mrs: BTreeMap<u64, (u64, u32)> = [(0, (100, 1)), (10, (20, 2)), (200, (300, 3))].into();
        assert_eq!(covering(&mrs, 15, 18), Some(&2));
        assert_eq!(covering(&mrs, 15, 50), Some(&1));
        assert_eq!(covering(&mrs, 250, 300), Some(&3));
        assert_eq!(covering(&mrs, 250, 301), None);
        assert_eq!(covering(&mrs, 100, 101), None);
    }

    #[test]
    fn work_requests_past_the_arena_are_refused() {
        let w = |remote, len| WorkRequest { id: 9, dir: Dir::Read, local: 0, lkey: 0, remote, len, host: true };
        assert!(check_bounds(&w(0, 4096), 4096).is_ok());
        assert!(check_bounds(&w(1, 4096), 4096).unwrap_err().0.contains("past the node's arena"));
        assert!(check_bounds(&w(u64::MAX, 2), u64::MAX).is_err());
        assert!(check_bounds(&w(0, MAX_MESSAGE + 1), u64::MAX).unwrap_err().0.contains("RDMA allows"));
    }

    #[test]
    fn completion_statuses_are_named() {
        assert_eq!(status_name(10), "IBV_WC_REM_ACCESS_ERR");
        assert_eq!(status_name(12), "IBV_WC_RETRY_EXC_ERR");
        assert_eq!(status_name(99), "work completion status 99");
    }

    #[test]
    fn verbs_objects_may_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<NodeRdma>();
        send_sync::<NodeQp>();
        send_sync::<ClientRdma>();
        send_sync::<PendingQp>();
        send_sync::<VerbsProvider>();
    }

    #[test]
    fn without_rdma_both_sides_fail_cleanly() {
        if crate::testing::rdma_host() {
            return; // a host with RDMA
        }
        let cfg = RdmaConfig::default();
        let e = ClientRdma::open(&[], cfg).unwrap_err();
        assert!(e.contains("RDMA is unavailable"), "{e}");
        let mut arena = vec![0u8; 4096];
        let e = NodeRdma::open("mlx5_0", arena.as_mut_ptr(), 4096, cfg).unwrap_err();
        assert!(e.contains("RDMA is unavailable"), "{e}");
    }

    /// Polls `p` until one completion arrives and checks it is `id`'s, successful.
    fn wait_for(p: &mut VerbsProvider, id: u64) {
        let (started, mut out) = (std::time::Instant::now(), Vec::new());
        while out.is_empty() {
            p.poll(&mut out).unwrap();
            assert!(started.elapsed().as_secs() < 10, "no completion for work request {id}");
        }
        assert_eq!(out, vec![Completion { id, result: Ok(()), crc: None }]);
    }

    /// The whole verbs path over one NIC's loopback: runs only on a host with RDMA devices.
    #[test]
    fn loopback_write_then_read_on_an_rdma_host() {
        if !crate::testing::rdma_host() {
            return; // no RDMA here: the paths this covers are listed in the module docs
        }
        let cfg = RdmaConfig { queue_depth: 8, ..RdmaConfig::default() };
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut dst = vec![0u8; 4096];
        let mut arena = vec![0u8; 1 << 16];
        let client = ClientRdma::open(&[], cfg).unwrap();
        let node = NodeRdma::open(&client.device_names()[0], arena.as_mut_ptr(), 1 << 16, cfg).unwrap();
        let (ours, pending) = client.prepare(0).unwrap();
        let (theirs, _node_qp) = node.accept(&QpInfo::decode(&ours.encode()).unwrap()).unwrap();
        assert_eq!((theirs.arena_addr, theirs.arena_len), (arena.as_ptr() as u64, 1 << 16));
        let mut p = pending.complete(&QpInfo::decode(&theirs.encode()).unwrap()).unwrap();
        let (src_at, dst_at) = (src.as_ptr() as u64, dst.as_mut_ptr() as u64);
        let (ls, ld) = (p.register(src_at, 4096, true).unwrap(), p.register(dst_at, 4096, true).unwrap());
        assert_eq!(p.register(src_at + 100, 100, true).unwrap(), ls, "a covered range reuses its MR");
        let wr = |id, dir, local, lkey| WorkRequest { id, dir, local, lkey, remote: 8192, len: 4096, host: true };
        // SAFETY: `src` outlives the transfer, which is polled to completion right after.
        unsafe { p.post(&[wr(1, Dir::Write, src_at, ls)]) }.unwrap();
        wait_for(&mut p, 1);
        assert_eq!(&arena[8192..12288], &src[..]);
        // SAFETY: `dst` outlives the transfer and nothing else touches it until it completes.
        unsafe { p.post(&[wr(2, Dir::Read, dst_at, ld)]) }.unwrap();
        wait_for(&mut p, 2);
        assert_eq!(dst, src);
        // SAFETY: refused before anything is posted.
        let e = unsafe { p.post(&[WorkRequest { remote: (1 << 16) - 100, ..wr(3, Dir::Write, src_at, ls) }]) };
        assert!(e.unwrap_err().0.contains("past the node's arena"));
    }
}
