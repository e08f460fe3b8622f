//! Response encoding.
