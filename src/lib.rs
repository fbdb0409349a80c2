//! MemKV: a zero-copy KV-cache block store for LLM serving.
//!
//! This crate holds the node (`memkv-server`), the wire protocol, the client library
//! ([`Client`](client::Client)) and the `memkv` CLI. See `docs/architecture.md` for the picture
//! and `docs/protocol.md` for the wire format.

pub mod auth;
pub mod client;
pub mod config;
pub mod license;
pub mod logging;
pub mod mem;
pub(crate) mod par;
pub mod server;
#[doc(hidden)]
pub mod testing;
pub mod topo;
pub(crate) mod transport;
pub mod wire;

pub use client::Client;
