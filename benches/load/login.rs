//! Register + login load: K keep-alive HTTP connections in the fan-out's
//! loop, each registering a fresh user and then logging in as it, over and
//! over, one request in flight per connection.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Poll, Token};

use crate::hist::{Histogram, Latency};
use crate::swarm::OTHER_TOKENS;

struct Client {
    stream: TcpStream,
    out: Vec<u8>,
    input: Vec<u8>,
    user: u64,
    registering: bool,
    busy: bool,
    since: Instant,
}

pub struct LoginLoad {
    clients: Vec<Client>,
    active: usize,
    tag: u64,
    next_user: u64,
    ops: u64,
    failures: u64,
    hist: Histogram,
    pub last_failure: Option<String>,
}

impl LoginLoad {
    pub fn new(poll: &Poll, http: SocketAddr, count: usize, tag: u64) -> LoginLoad {
        let clients = (0..count)
            .map(|i| {
                let std = std::net::TcpStream::connect(http).expect("connect to the HTTP API");
                std.set_nodelay(true).ok();
                std.set_nonblocking(true).expect("nonblocking");
                let mut stream = TcpStream::from_std(std);
                poll.registry()
                    .register(
                        &mut stream,
                        Token(OTHER_TOKENS + i),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .expect("register");
                Client {
                    stream,
                    out: Vec::new(),
                    input: Vec::new(),
                    user: 0,
                    registering: true,
                    busy: false,
                    since: Instant::now(),
                }
            })
            .collect();
        LoginLoad {
            clients,
            active: 0,
            tag,
            next_user: 0,
            ops: 0,
            failures: 0,
            hist: Histogram::new(),
            last_failure: None,
        }
    }

    /// How many of the connections issue requests from now on.
    pub fn set_active(&mut self, count: usize) {
        self.active = count.min(self.clients.len());
    }

    /// (completed operations, failed ones) since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.ops),
            std::mem::take(&mut self.failures),
        )
    }

    pub fn take_latency(&mut self) -> Latency {
        let latency = Latency::of(&self.hist);
        self.hist.clear();
        latency
    }

    /// Starts a request on every idle active connection.
    pub fn kick(&mut self) {
        for i in 0..self.active {
            if !self.clients[i].busy {
                self.start(i);
            }
        }
    }

    fn start(&mut self, i: usize) {
        let tag = self.tag;
        let client = &mut self.clients[i];
        if client.registering {
            client.user = self.next_user;
            self.next_user += 1;
        }
        let (tel, name) = (
            format!("2{tag:06}{:07}", client.user),
            format!("l{tag}u{}", client.user),
        );
        let body = if client.registering {
            format!("user_tel={tel}&user_name={name}&user_password=bench-secret")
        } else {
            format!("user_tel={tel}&user_password=bench-secret")
        };
        let path = if client.registering {
            "/auth/register"
        } else {
            "/auth/login"
        };
        write!(
            client.out,
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        client.busy = true;
        client.since = Instant::now();
        Self::flush(client);
    }

    fn flush(client: &mut Client) {
        while !client.out.is_empty() {
            match client.stream.write(&client.out) {
                Ok(n) => {
                    client.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("login connection write: {e}"),
            }
        }
    }

    pub fn event(&mut self, event: &mio::event::Event) {
        let i = event.token().0 - OTHER_TOKENS;
        if event.is_writable() {
            Self::flush(&mut self.clients[i]);
        }
        if !event.is_readable() {
            return;
        }
        let mut chunk = [0u8; 4096];
        loop {
            match self.clients[i].stream.read(&mut chunk) {
                Ok(0) => panic!("the server closed a login connection"),
                Ok(n) => self.clients[i].input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("login connection read: {e}"),
            }
        }
        while let Some((status, body)) = take_response(&mut self.clients[i].input) {
            let client = &mut self.clients[i];
            let wanted = if client.registering {
                "register successfully"
            } else {
                "login successfully"
            };
            client.busy = false;
            if status == 200 && body.contains(wanted) {
                self.ops += 1;
                self.hist.record(client.since.elapsed().as_nanos() as u64);
                client.registering = !client.registering;
            } else {
                self.failures += 1;
                self.last_failure = Some(format!("{status} {body}"));
            }
            if i < self.active {
                self.start(i);
            }
        }
    }
}

/// Takes one whole response off the front of `input`.
fn take_response(input: &mut Vec<u8>) -> Option<(u16, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(input).ok()? else {
        return None;
    };
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    if input.len() < head + length {
        return None;
    }
    let status = response.code.unwrap_or(0);
    let body = String::from_utf8_lossy(&input[head..head + length]).into_owned();
    input.drain(..head + length);
    Some((status, body))
}
