//! Transports: how frames and payload bytes move between a client and a node.
//!
//! - `tcp`: the byte-stream framing edge (vectored writes, payloads received straight into their
//!   destination); every session's control traffic, and the whole data path of TCP sessions.
//! - `crc_copy`: copies that take the CRC32C of the bytes in the same pass, around the cache or
//!   through it (the same-host data path).
//! - `onesided`: the provider interface (register, post, poll) of the one-sided data path and
//!   the transfer loop written once against it.
//! - `shm`: same-host provider: the node's arena arrives as a memfd over a Unix socket after the
//!   authenticated handshake; a one-sided write or read is a copy into or out of it.
//! - `ring`: same-host frames: two byte rings in shared memory that replace the Unix socket
//!   after the handshake (eventfds wake a side that waits).
//! - `rdma`: verbs provider (RC queue pairs, RDMA WRITE/READ into the node's registered arena),
//!   bootstrapped by a CONNECT op over the authenticated TCP session.

pub(crate) mod crc_copy;
pub(crate) mod onesided;
pub(crate) mod rdma;
pub(crate) mod ring;
pub(crate) mod shm;
pub(crate) mod tcp;
