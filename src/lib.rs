//! chatroom: a single-threaded, durable chat backend.

pub mod chat;
pub mod http;
pub mod store;
pub mod ws;
