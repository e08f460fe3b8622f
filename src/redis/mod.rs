//! Redis, for cluster mode: the pieces that know RESP and connections but
//! nothing of chat.
//!
//! - [`resp`]: the RESP2 codec, bounded before anything is trusted.
//! - [`link`]: one Redis connection as a sans-IO state machine (pipelined
//!   commands, pub/sub, handshake, reconnect with backoff). The reactor
//!   drives two of them, one for commands and one for subscriptions.
//! - [`url`]: the `--redis` URL, `redis://[[user]:password@]host[:port][/db]`.

pub mod link;
pub mod resp;
pub mod url;

pub use link::{DownReason, Link, LinkConfig, LinkEvent, Role, SendError, SubscribeError, Tag};
pub use resp::{Command, Reply, RespDecoder, RespError, RespLimits, Status};
pub use url::{RedisUrl, UrlError};
