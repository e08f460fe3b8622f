//! chatroom: a single-threaded, durable chat backend.
//!
//! One mio reactor thread owns every socket; sans-IO codecs turn bytes into
//! requests; the API answers them from an in-memory model rebuilt from
//! append-only files; password hashing and fsync run on helper threads.

pub mod api;
pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod reactor;
pub mod redis;
pub mod server;
pub mod store;
pub mod web;
pub mod ws;

pub use config::{Cli, Config, WsMode};
pub use server::{RunningServer, Server, StartError};
