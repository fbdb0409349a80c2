//! GPU blocks over TCP: device memory is copied through the pinned staging slots
//! ([`crate::mem::staging`]) and each slot travels as one ranged PUT, or is filled by one ranged
//! GET, while the next slot's copy runs (double buffering).
//!
//! Each chunk's PUT or GET runs on a task of its own. The client's share of a request (the CRC32C
//! of the chunk, and over shared memory the copy between the slot and the node's arena, made
//! in the request's own future) then spreads over the runtime's workers instead of running, one
//! chunk after another, on the one task that drives the pipeline: on a 16-core GPU host that task
//! held staged transfers over shared memory below the TCP figures.

use std::time::{Duration, Instant};

use super::{Client, ClientError, GetItem, Loans, PutItem};
use crate::mem::staging::{self, BoxError, CopyEngine, Segment, SlotPool, StagingError};

/// One staged transfer: `len` bytes at device address `addr` ↔ `[offset, offset + len)` of the
/// `total`-byte object `key` (`total` matters for writes only).
#[derive(Debug, Clone, Copy)]
pub struct StagedPart<'a> {
    /// Object key (the namespace is added by the client).
    pub key: &'a [u8],
    /// Offset inside the object.
    pub offset: u64,
    /// Final object size (writes).
    pub total: u64,
    /// Device address.
    pub addr: u64,
    /// Byte count.
    pub len: u64,
}

/// Why a staged transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum StagedError {
    /// The node or the connection failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A copy or the slot pool failed.
    #[error(transparent)]
    Staging(StagingError),
    /// The object of part `0` is absent.
    #[error("part {0}: the object is absent")]
    Absent(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("absent")]
struct Absent(usize);

/// The client's own errors back out of the pipeline's wrapping; the pipeline's errors as they are.
fn unwrap(e: StagingError) -> StagedError {
    match e {
        StagingError::Send { source, .. } | StagingError::Fetch { source, .. } if source.is::<ClientError>() => {
            StagedError::Client(*source.downcast::<ClientError>().expect("checked by is()"))
        }
        StagingError::Fetch { source, .. } if source.is::<Absent>() => {
            StagedError::Absent(source.downcast_ref::<Absent>().expect("checked by is()").0)
        }
        other => StagedError::Staging(other),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn segments(parts: &[StagedPart<'_>]) -> Vec<Segment> {
    parts.iter().enumerate().map(|(i, p)| Segment::new(p.addr, p.len, i)).collect()
}

impl Client {
    /// Writes device memory to objects through `pool`'s slots, copying with `engine`.
    ///
    /// # Safety
    /// Every part's device range must be readable by `engine` and unchanged until the future
    /// completes or is dropped.
    pub async unsafe fn put_staged<E: CopyEngine>(
        &self,
        pool: &SlotPool,
        engine: &E,
        parts: &[StagedPart<'_>],
    ) -> Result<(), StagedError> {
        let send = |c: staging::Chunk| {
            let p = parts[c.block];
            let item =
                PutItem { key: p.key.to_vec(), offset: p.offset + c.offset_in_segment, total: p.total, data: c.data };
            let client = self.clone();
            // A task per chunk (see the module docs); aborted if the transfer is dropped, as the
            // request's future was dropped before, so no new request starts for a caller that
            // gave up (one already handed to a connection may still complete).
            let task = tokio::spawn(async move { client.put_batch(std::slice::from_ref(&item)).await });
            let abort = AbortOnDrop(task.abort_handle());
            async move {
                let sent = task.await;
                drop(abort);
                sent.map_err(|e| Box::new(e) as BoxError)?.map_err(|e| Box::new(e) as BoxError)
            }
        };
        let segments = segments(parts);
        // SAFETY: the device ranges are the caller's promise; slots belong to the pool.
        unsafe { staging::stage_out(pool, engine, &segments, send) }.await.map_err(unwrap)
    }

    /// Reads objects into device memory through `pool`'s slots, copying with `engine`. An
    /// absent object is [`StagedError::Absent`].
    ///
    /// # Safety
    /// Every part's device range must be writable by `engine` and untouched by anyone else until
    /// the future completes or is dropped.
    pub async unsafe fn get_staged<E: CopyEngine>(
        &self,
        pool: &SlotPool,
        engine: &E,
        parts: &[StagedPart<'_>],
    ) -> Result<(), StagedError> {
        let timeout = self.inner.cfg.op_timeout;
        let fetch = |req: staging::ChunkReq, mut slot: staging::Slot| {
            let p = parts[req.block];
            let item =
                GetItem { key: p.key.to_vec(), offset: p.offset + req.offset_in_segment, length: req.len as u64 };
            let client = self.clone();
            // A task per chunk (see the module docs), left to finish if the transfer is dropped:
            // it gives the slot back only once no connection can still write into it.
            let task = tokio::spawn(async move {
                let loans = Loans::new();
                // SAFETY: the slot is ours until we return it; the loan is waited out below.
                let target = unsafe { loans.target(slot.as_mut_ptr(), req.len) };
                let got = client.get_batch_into(std::slice::from_ref(&item), vec![target]).await;
                // The slot goes back only when no connection can still write into it.
                let deadline = Instant::now() + timeout;
                while loans.outstanding() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                }
                match got {
                    Ok(found) if found[0] => Ok(slot),
                    Ok(_) => Err(Box::new(Absent(req.block)) as BoxError),
                    Err(e) => Err(Box::new(e) as BoxError),
                }
            });
            async move { task.await.map_err(|e| Box::new(e) as BoxError)? }
        };
        let segments = segments(parts);
        // SAFETY: the device ranges are the caller's promise; slots belong to the pool.
        unsafe { staging::stage_in(pool, engine, &segments, fetch) }.await.map_err(unwrap)
    }
}
