//! Cluster mode on Redis (SPEC §9, docs/cluster.md): built a room at a
//! time; today the key layout.

pub mod keys;
