//! The sockets of the two Redis links: the reactor's part of the contract
//! in `redis::link` — open a non-blocking connection on `Connect`, report
//! it connected when it turns writable, feed what it reads, write what the
//! link holds, close it on `Down`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::redis::{DownReason, Link, LinkEvent};

#[derive(Debug)]
pub(super) struct RedisSocket {
    token: Token,
    addr: SocketAddr,
    stream: Option<TcpStream>,
    connected: bool,
    /// The last write would have blocked: the rest waits for a writable
    /// edge rather than for the next turn.
    write_blocked: bool,
}

impl RedisSocket {
    pub(super) fn new(token: Token, addr: SocketAddr) -> RedisSocket {
        RedisSocket {
            token,
            addr,
            stream: None,
            connected: false,
            write_blocked: false,
        }
    }

    fn close(&mut self, registry: &Registry) {
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        self.connected = false;
        self.write_blocked = false;
    }

    /// The link holds bytes this socket could take now; the reactor must
    /// not sleep in poll while so.
    pub(super) fn can_write(&self, link: &Link) -> bool {
        self.connected && !self.write_blocked && link.unsent_bytes() > 0
    }

    /// Readiness on this socket.
    pub(super) fn on_ready(
        &mut self,
        link: &mut Link,
        event: &Event,
        scratch: &mut [u8],
        now: Instant,
    ) {
        let Some(stream) = &mut self.stream else {
            return;
        };
        if event.is_writable() {
            self.write_blocked = false;
        }
        if !self.connected {
            if event.is_error() || event.is_write_closed() {
                let kind = match stream.take_error() {
                    Ok(Some(error)) => error.kind(),
                    _ => io::ErrorKind::ConnectionRefused,
                };
                link.handle_disconnected(now, DownReason::Io(kind));
                return;
            }
            if !event.is_writable() {
                return;
            }
            match stream.peer_addr() {
                Ok(_) => {
                    self.connected = true;
                    link.handle_connected(now);
                }
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return,
                Err(error) => {
                    link.handle_disconnected(now, DownReason::Io(error.kind()));
                    return;
                }
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            loop {
                match stream.read(scratch) {
                    Ok(0) => {
                        link.handle_disconnected(now, DownReason::PeerClosed);
                        return;
                    }
                    Ok(read) => link.handle_input(&scratch[..read], now),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        link.handle_disconnected(now, DownReason::Io(error.kind()));
                        return;
                    }
                }
            }
        }
    }

    /// Carries out the link's socket events and writes what it holds;
    /// every other event is appended to `out`, for the chat.
    pub(super) fn pump(
        &mut self,
        link: &mut Link,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<LinkEvent>,
    ) {
        loop {
            while let Some(event) = link.poll_event() {
                match event {
                    LinkEvent::Connect => self.connect(link, registry, now),
                    LinkEvent::Down { .. } => {
                        self.close(registry);
                        out.push(event);
                    }
                    other => out.push(other),
                }
            }
            if !self.write(link, now) {
                // The write failed and the link went down: its events next.
                continue;
            }
            if link_is_quiet(link) {
                return;
            }
        }
    }

    fn connect(&mut self, link: &mut Link, registry: &Registry, now: Instant) {
        self.close(registry);
        let mut stream = match TcpStream::connect(self.addr) {
            Ok(stream) => stream,
            Err(error) => {
                link.handle_disconnected(now, DownReason::Io(error.kind()));
                return;
            }
        };
        if let Err(error) = registry.register(
            &mut stream,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            link.handle_disconnected(now, DownReason::Io(error.kind()));
            return;
        }
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
    }

    /// Writes until the link holds nothing or the socket is full; false
    /// when writing failed (the link is then down).
    fn write(&mut self, link: &mut Link, now: Instant) -> bool {
        if !self.connected {
            return true;
        }
        let Some(stream) = &mut self.stream else {
            return true;
        };
        while let Some(bytes) = link.poll_transmit() {
            match stream.write(bytes) {
                Ok(0) => {
                    link.handle_disconnected(now, DownReason::Io(io::ErrorKind::WriteZero));
                    return false;
                }
                Ok(written) => link.advance_transmit(written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return true;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    link.handle_disconnected(now, DownReason::Io(error.kind()));
                    return false;
                }
            }
        }
        true
    }
}

/// Nothing queued for the driver: no event waits (writes that would block
/// resume on the next writable edge).
fn link_is_quiet(link: &Link) -> bool {
    !link.has_events()
}
