//! A WebSocket echo server over chatroom's own transport, for the Autobahn
//! TestSuite: `cargo run --release --example echo -- 127.0.0.1:9001`.
//!
//! Every text or binary message comes back unchanged. The limits are raised
//! so the suite's largest cases (16 MiB messages, 65536 fragments) fit; the
//! chat listeners keep their own, much smaller ones.

use std::net::SocketAddr;
use std::process::ExitCode;

use chatroom::{Config, Server, WsMode};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_string());
    let Ok(ws_addr) = addr.parse::<SocketAddr>() else {
        eprintln!("usage: echo [ADDR]   (e.g. 127.0.0.1:9001); `{addr}` is not an address");
        return ExitCode::FAILURE;
    };
    let data_dir = std::env::temp_dir().join(format!("chatroom-echo-{}", std::process::id()));
    let config = Config {
        ws_addr,
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.clone(),
        ws_mode: WsMode::Echo,
        ws_limits: chatroom::ws::Limits {
            max_message_bytes: 16 * 1024 * 1024,
            max_fragments: 65_536 * 2,
        },
        max_outbound_bytes: 64 * 1024 * 1024,
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        ..Config::default()
    };
    let result = Server::bind(config)
        .map_err(|e| e.to_string())
        .and_then(|server| {
            println!("echo server on ws://{}", server.ws_addr());
            server.run().map_err(|e| e.to_string())
        });
    let _ = std::fs::remove_dir_all(&data_dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}
