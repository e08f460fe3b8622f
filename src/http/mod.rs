//! HTTP/1.1: the sans-IO request parser, parameter extraction, responses,
//! and the client address behind a trusted reverse proxy.

pub mod forwarded;
pub mod params;
pub mod request;
pub mod response;
