//! HTTP/1.1: the sans-IO request parser, parameter extraction and responses.

pub mod params;
pub mod request;
pub mod response;
