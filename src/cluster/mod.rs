//! Cluster mode on Redis (SPEC §9, docs/cluster.md): any number of nodes
//! share users, rooms, tokens, seats and history in one Redis.
//!
//! - [`keys`]: every key name, with rooms in hash tags.
//! - [`scripts`]: the Lua scripts that make each state change atomic.
//! - [`feed`]: one room's messages from pub/sub to members, in seq order.
//! - [`api`]: the HTTP API and WebSocket chat on that store, sans-IO.

pub mod api;
pub mod feed;
pub mod keys;
pub mod scripts;

pub use api::{ClusterApi, ClusterCounters};
