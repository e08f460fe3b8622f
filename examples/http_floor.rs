//! The cost floor of a keep-alive HTTP request on this machine: a mio
//! responder that does nothing but count request heads and write a fixed
//! answer of the same size as chatroom's empty `/chatroom/list`. What it
//! spends per request is the kernel's share (one read, one write, epoll),
//! which no server design can beat; BENCHMARKS.md compares against it.
//!
//! `cargo run --release --example http_floor -- 127.0.0.1:5078`

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: chatroom\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 27\r\nAccess-Control-Allow-Origin: *\r\n\r\n{\"rooms\":[],\"room_list\":[]}";

struct Conn {
    socket: TcpStream,
    /// Trailing bytes of the last read, so a head split across reads is
    /// still counted once.
    tail: Vec<u8>,
}

fn count_heads(tail: &mut Vec<u8>, input: &[u8]) -> usize {
    tail.extend_from_slice(input);
    let mut heads = 0;
    let mut start = 0;
    while let Some(at) = tail[start..].windows(4).position(|w| w == b"\r\n\r\n") {
        heads += 1;
        start += at + 4;
    }
    tail.drain(..start);
    heads
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5078".to_string())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("http_floor listening on {}", listener.local_addr()?);
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut socket, _)) = listener.accept() {
                    socket.set_nodelay(true)?;
                    let entry = conns.vacant_entry();
                    poll.registry().register(
                        &mut socket,
                        Token(entry.key()),
                        Interest::READABLE,
                    )?;
                    entry.insert(Conn {
                        socket,
                        tail: Vec::new(),
                    });
                }
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let mut closed = false;
            out.clear();
            loop {
                match conn.socket.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        for _ in 0..count_heads(&mut conn.tail, &buf[..n]) {
                            out.extend_from_slice(RESPONSE);
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            // Small answers to a reader that keeps up: a short write would be
            // a bench failure, not something to handle.
            if !out.is_empty() && conn.socket.write_all(&out).is_err() {
                closed = true;
            }
            if closed {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.socket);
            }
        }
    }
}
