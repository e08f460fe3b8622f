//! RFC 6455 WebSocket transport (sans-IO).
