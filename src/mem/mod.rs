//! Local memory: registration of host and GPU regions, the MR cache, staging slots.

pub mod cache;
pub mod staging;
