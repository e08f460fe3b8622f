//! Server configuration: the command line (SPEC §7) and its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::api::ChatConfig;
use crate::http::forwarded::{Cidr, TrustedProxies};
use crate::http::request::HttpLimits;
use crate::redis::RedisUrl;
use crate::ws::Limits as WsLimits;

/// Everything the server can be told; `Config::default()` is SPEC's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub cors_origin: String,
    /// Reverse proxies whose `X-Forwarded-For` / `X-Real-IP` name the
    /// client; empty means every peer is its own client.
    pub trusted_proxies: TrustedProxies,
    pub room_capacity: u32,
    pub max_rooms: usize,
    pub seat_ttl: Duration,
    pub http_limits: HttpLimits,
    pub header_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub hash_threads: usize,
    /// Password jobs allowed to wait for a hash thread before requests are
    /// answered 503: a flood of logins must not queue unbounded work.
    pub max_pending_hashes: usize,
    pub chat: ChatConfig,
    /// Origins allowed to open a WebSocket; empty means any.
    pub allowed_origins: Vec<String>,
    pub ws_limits: WsLimits,
    /// Unsent output past which a connection is closed as a slow consumer.
    pub max_outbound_bytes: usize,
    /// WebSocket idle time before the server pings.
    pub ws_ping_after: Duration,
    /// WebSocket silence after which the connection is closed.
    pub ws_idle_timeout: Duration,
    /// What WebSocket messages are for: the chat, or echoing them back
    /// (the conformance-test server in `examples/echo.rs`).
    pub ws_mode: WsMode,
    /// Cluster mode (SPEC §9): users, rooms, tokens, seats and history live
    /// in this Redis, shared by every node; `data_dir` is not used.
    pub redis: Option<RedisUrl>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsMode {
    Chat,
    Echo,
}

impl Default for Config {
    fn default() -> Self {
        Cli::parse_from(["chatroom"]).into_config()
    }
}

const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `60`, `60s`, `500ms`, `2m`, `1h` into a duration.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 60, 60s, 500ms or 2m"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(value),
        "ms" => Duration::from_millis(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    // Deadlines are `now + duration`; a year is longer than any sensible
    // setting and keeps that sum far from overflowing.
    if duration > MAX_DURATION {
        return Err(format!("`{text}` is longer than a year"));
    }
    Ok(duration)
}

fn default_hash_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

fn parse_capacity(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err("must be a whole number from 1 to 10000".to_string()),
    }
}

/// Command line of the `chatroom` binary.
#[derive(Debug, Parser)]
#[command(
    name = "chatroom",
    version,
    about = "A chat backend: HTTP JSON API and WebSocket chat rooms, in one small process."
)]
pub struct Cli {
    /// Address of the HTTP API (also serves the WebSocket upgrade at /ws).
    #[arg(long = "http", value_name = "ADDR", default_value = "0.0.0.0:5000")]
    pub http_addr: SocketAddr,

    /// Address of the WebSocket chat listener (any path is accepted).
    #[arg(long = "ws", value_name = "ADDR", default_value = "0.0.0.0:2333")]
    pub ws_addr: SocketAddr,

    /// Directory holding users.jsonl, rooms.jsonl and the lock file; created if missing.
    #[arg(long, value_name = "DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Value of Access-Control-Allow-Origin on every response.
    #[arg(long, value_name = "ORIGIN", default_value = "*")]
    pub cors_origin: String,

    /// Peers in this range are reverse proxies whose X-Forwarded-For names the client, e.g. 127.0.0.1/32 (repeatable; none by default).
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<Cidr>,

    /// Seats in a room created without an explicit capacity (1-10000).
    #[arg(long, value_name = "N", default_value = "100", value_parser = parse_capacity)]
    pub room_capacity: u32,

    /// Most rooms the server will hold; creation past it answers "too many rooms".
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_rooms: usize,

    /// How long a seat survives with no WebSocket connection of its user in the room.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub seat_ttl: Duration,

    /// Most bytes of request line plus headers (431 past it).
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024)]
    pub max_header_bytes: usize,

    /// Most header fields in one request (431 past it).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_headers: usize,

    /// Most bytes of request body (413 past it).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Time a client has to send a request's headers, and then its body (408 past it).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Idle keep-alive HTTP connections are closed after this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Most open connections over both listeners; past it HTTP gets 503.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,

    /// argon2id memory cost in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,

    /// argon2id iterations (time cost).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Threads that hash and verify passwords (default: cores, at most 4).
    #[arg(long, value_name = "N", default_value_t = default_hash_threads())]
    pub hash_threads: usize,

    /// Password jobs that may wait for a hash thread before requests get 503.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_pending_hashes: usize,

    /// Only these Origins may open a WebSocket (repeatable); without it any origin may.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// Refuse WebSocket packets without a valid login token.
    #[arg(long)]
    pub require_token: bool,

    /// Longest chat message, in characters.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub max_msg_chars: usize,

    /// Newest messages kept per room, for history and recovery; 0 turns history off.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub history_size: u32,

    /// Newest messages a joiner receives right after its join (0: none).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub history_on_join: u32,

    /// Sustained WebSocket packets per second per connection; 0 turns the limit off.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub ws_rate: u32,

    /// WebSocket packets a connection may send in one burst.
    #[arg(long, value_name = "N", default_value_t = 40)]
    pub ws_burst: u32,

    /// Largest WebSocket message, in bytes (close 1009 past it).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Most frames one fragmented WebSocket message may arrive in.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_fragments: usize,

    /// Unsent output past which a connection is closed as a slow consumer (1008).
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub max_outbound_bytes: usize,

    /// Idle time after which the server pings a WebSocket.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ws_ping_after: Duration,

    /// Silence after which a WebSocket is closed.
    #[arg(long, value_name = "DURATION", default_value = "75s", value_parser = parse_duration)]
    pub ws_idle_timeout: Duration,

    /// Cluster mode: keep all state in this Redis (redis://[[user]:password@]host[:port][/db]) so any number of servers act as one; --data-dir is then unused.
    #[arg(long, value_name = "URL", value_parser = parse_redis_url)]
    pub redis: Option<RedisUrl>,
}

fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    RedisUrl::parse(text).map_err(|error| error.to_string())
}

impl Cli {
    pub fn into_config(self) -> Config {
        Config {
            http_addr: self.http_addr,
            ws_addr: self.ws_addr,
            data_dir: self.data_dir,
            cors_origin: self.cors_origin,
            trusted_proxies: TrustedProxies::new(self.trusted_proxies),
            room_capacity: self.room_capacity,
            max_rooms: self.max_rooms,
            seat_ttl: self.seat_ttl,
            http_limits: HttpLimits {
                max_head_bytes: self.max_header_bytes,
                max_headers: self.max_headers,
                max_body_bytes: self.max_body_bytes,
            },
            header_timeout: self.header_timeout,
            keep_alive_timeout: self.keepalive_timeout,
            max_connections: self.max_connections,
            argon2_memory_kib: self.argon2_memory_kib,
            argon2_iterations: self.argon2_iterations,
            hash_threads: self.hash_threads.max(1),
            max_pending_hashes: self.max_pending_hashes.max(1),
            chat: ChatConfig {
                require_token: self.require_token,
                max_msg_chars: self.max_msg_chars,
                ws_rate: self.ws_rate,
                ws_burst: self.ws_burst.max(1),
                history_size: self.history_size as usize,
                history_on_join: self.history_on_join as usize,
            },
            allowed_origins: self.allowed_origins,
            ws_limits: WsLimits {
                max_message_bytes: self.max_message_bytes,
                max_fragments: self.max_fragments.max(1),
            },
            max_outbound_bytes: self.max_outbound_bytes,
            ws_ping_after: self.ws_ping_after,
            ws_idle_timeout: self.ws_idle_timeout,
            ws_mode: WsMode::Chat,
            redis: self.redis,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let config = Config::default();
        assert_eq!(config.http_addr, "0.0.0.0:5000".parse().unwrap());
        assert_eq!(config.ws_addr, "0.0.0.0:2333".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.cors_origin, "*");
        assert_eq!(config.room_capacity, 100);
        assert_eq!(config.max_rooms, 10_000);
        assert_eq!(config.seat_ttl, Duration::from_secs(60));
        assert_eq!(config.http_limits, HttpLimits::default());
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert_eq!(config.keep_alive_timeout, Duration::from_secs(60));
        assert_eq!(config.max_connections, 10_000);
        assert_eq!(config.argon2_memory_kib, 19_456);
        assert_eq!(config.argon2_iterations, 2);
        assert!(!config.chat.require_token);
        assert_eq!(config.chat.max_msg_chars, 2000);
        assert_eq!((config.chat.ws_rate, config.chat.ws_burst), (20, 40));
        assert_eq!(config.ws_limits.max_message_bytes, 64 * 1024);
        assert_eq!(config.max_outbound_bytes, 1024 * 1024);
        assert_eq!(config.ws_ping_after, Duration::from_secs(30));
        assert_eq!(config.ws_idle_timeout, Duration::from_secs(75));
        assert!(config.allowed_origins.is_empty());
        assert!(config.trusted_proxies.is_empty());
        assert_eq!(config.ws_mode, WsMode::Chat);
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("18446744073709551615").is_err());
        assert!(parse_duration("600000h").is_err());
    }

    #[test]
    fn capacity_is_range_checked() {
        assert!(Cli::try_parse_from(["chatroom", "--room-capacity", "0"]).is_err());
        assert!(Cli::try_parse_from(["chatroom", "--room-capacity", "10001"]).is_err());
        let cli = Cli::try_parse_from(["chatroom", "--room-capacity", "5"]).unwrap();
        assert_eq!(cli.into_config().room_capacity, 5);
    }

    #[test]
    fn trusted_proxies_repeat_and_take_both_families() {
        let cli = Cli::try_parse_from([
            "chatroom",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--trusted-proxy",
            "::1",
            "--trusted-proxy",
            "10.0.0.0/8",
        ])
        .unwrap();
        let trusted = cli.into_config().trusted_proxies;
        let ranges: Vec<String> = trusted.ranges().iter().map(|r| r.to_string()).collect();
        assert_eq!(ranges, ["127.0.0.1/32", "::1/128", "10.0.0.0/8"]);
    }

    #[test]
    fn an_invalid_trusted_proxy_is_a_clear_error() {
        for bad in ["localhost", "10.0.0.0/33", "10.0.0.1/8", "127.0.0.1:80"] {
            let error = Cli::try_parse_from(["chatroom", "--trusted-proxy", bad])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("--trusted-proxy") && error.contains(bad),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
