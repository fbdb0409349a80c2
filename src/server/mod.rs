//! The MemKV node.
mod arena;
mod store;
