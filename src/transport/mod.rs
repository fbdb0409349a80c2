//! Transports: how frames and payload bytes move between a client and a node.
//!
//! `tcp` is the production byte-stream transport (vectored writes, payloads received straight
//! into their destination). RDMA arrives with its own issue; `MEMKV_TRANSPORT=auto` falls back to
//! TCP until then, saying so once in the log.

pub(crate) mod tcp;
