//! The reactor's WebSocket side: the upgrade in place, feeding frames to the
//! decoder, keep-alive pings, closes, and delivering the API's frames with
//! the slow-consumer limit.

use std::time::Instant;

use super::http::ReplyShape;
use super::{Listener, Now, Protocol, Reactor};
use crate::config::{Config, WsMode};
use crate::http::params;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::ws::{self, close_code, Decoder, Event as WsEvent};

#[derive(Debug)]
pub(super) struct WsConn {
    decoder: Decoder,
    /// A ping went out and nothing has been heard since.
    ping_outstanding: bool,
    /// A close frame is queued: once it is written, the connection closes.
    pub(super) close_after_flush: bool,
    /// The chat still counts this connection in its rooms.
    pub(super) in_chat: bool,
}

impl WsConn {
    /// When the connection next needs the timer: a ping after a quiet spell,
    /// the close after a long silence, or the end of a close's linger.
    /// `current` is the deadline already set: a close's linger is fixed
    /// when the close starts, so a peer that keeps sending cannot push it.
    pub(super) fn deadline(
        &self,
        current: Option<Instant>,
        last_read: Instant,
        config: &Config,
        now: Instant,
    ) -> Instant {
        if self.close_after_flush {
            current.unwrap_or(now + super::LINGER)
        } else if self.ping_outstanding {
            last_read + config.ws_idle_timeout
        } else {
            last_read + config.ws_ping_after
        }
    }
}

fn token_in_query(request: &Request) -> Option<String> {
    let params = params::extract(request.query(), None, b"").ok()?;
    params
        .get("token")
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

impl Reactor {
    /// A request on the chat port, or at `/ws`: switch the connection to
    /// WebSocket in place, or refuse with the status the handshake earned.
    pub(super) fn upgrade(&mut self, key: usize, request: &Request, now: Now) {
        let headers = request
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice()));
        let accept = ws::validate_upgrade(&request.method, headers, &self.config.allowed_origins);
        let accept = match accept {
            Ok(_) if self.shutdown_deadline.is_some() => Err(None),
            Ok(accept) => Ok(accept),
            Err(refusal) => Err(Some(refusal)),
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match accept {
            Ok(accept) => {
                conn.out.push(
                    ws::switching_protocols_response(&accept),
                    &mut self.spare_rings,
                );
                let in_chat = self.config.ws_mode == WsMode::Chat;
                conn.protocol = Protocol::WebSocket(WsConn {
                    decoder: Decoder::new(self.config.ws_limits),
                    ping_outstanding: false,
                    close_after_flush: false,
                    in_chat,
                });
                conn.last_read = now.mono;
                conn.was_websocket = true;
                self.metrics.websocket_upgrades += 1;
                log::debug!(
                    "{} upgraded to WebSocket on the {} port",
                    conn.who(),
                    if conn.listener == Listener::Ws {
                        "chat"
                    } else {
                        "API"
                    }
                );
                if in_chat {
                    let conn_ref = conn.conn_ref(key);
                    self.engine.ws_open(conn_ref, token_in_query(request), now);
                }
                self.mark_dirty(key);
            }
            Err(None) => {
                let response = Response::res(503, "shutting down").with_header("Retry-After", "5");
                let shape = ReplyShape {
                    endpoint: crate::api::endpoint_label(request.path()),
                    head_only: false,
                    keep_alive: false,
                    http10: request.minor_version == 0,
                };
                self.send_reply(key, shape, response);
            }
            Err(Some(refusal)) => {
                let res = match refusal.status() {
                    403 => "forbidden",
                    426 => "upgrade required",
                    _ => "bad request",
                };
                let mut response =
                    Response::res_with_error(refusal.status(), res, refusal.reason());
                for (name, value) in refusal.response_headers() {
                    response = response.with_header(name, *value);
                }
                let shape = ReplyShape {
                    endpoint: crate::api::endpoint_label(request.path()),
                    head_only: false,
                    keep_alive: false,
                    http10: request.minor_version == 0,
                };
                self.send_reply(key, shape, response);
            }
        }
    }

    pub(super) fn process_ws(&mut self, key: usize, now: Now) {
        let mut consumed = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let conn_ref = conn.conn_ref(key);
            let Protocol::WebSocket(socket) = &mut conn.protocol else {
                break;
            };
            if socket.close_after_flush {
                // Closing: nothing more from the peer matters.
                consumed = conn.inbuf.len();
                break;
            }
            socket.ping_outstanding = false;
            let input = conn.inbuf.get(consumed..).unwrap_or_default();
            let event = match socket.decoder.decode(input) {
                Ok((used, event)) => {
                    consumed += used;
                    match event {
                        Some(event) => event,
                        None if used == 0 => break,
                        None => continue,
                    }
                }
                Err(error) => {
                    log::debug!("closing WebSocket {}: {error}", conn.who());
                    let frame = ws::close_frame(error.close_code(), error.reason());
                    self.close_ws(key, frame, error.reason(), now);
                    continue;
                }
            };
            if matches!(event, WsEvent::Text(_) | WsEvent::Binary(_)) {
                self.metrics.ws_messages_in += 1;
            }
            match event {
                WsEvent::Text(text) => match self.config.ws_mode {
                    WsMode::Chat => self.engine.ws_text(conn_ref, &text, now),
                    WsMode::Echo => {
                        conn.out
                            .push(ws::text_frame(text.as_bytes()), &mut self.spare_rings);
                        self.enforce_outbound_limit(key, now);
                    }
                },
                WsEvent::Binary(data) => match self.config.ws_mode {
                    WsMode::Chat => self.engine.ws_binary(conn_ref, now),
                    WsMode::Echo => {
                        conn.out
                            .push(ws::binary_frame(&data), &mut self.spare_rings);
                        self.enforce_outbound_limit(key, now);
                    }
                },
                WsEvent::Ping(payload) => {
                    conn.out
                        .push(ws::pong_frame(&payload), &mut self.spare_rings);
                    self.enforce_outbound_limit(key, now);
                }
                WsEvent::Pong(_) => {}
                WsEvent::Close { code, .. } => {
                    // A packet read in the same batch as the close (the
                    // Android app sends `leave` and closes at once) is
                    // answered before the close echo; once the close is
                    // queued nothing more goes out. Frames waiting behind
                    // an unwritten chat message cannot be sent ahead of it
                    // and are dropped with the connection.
                    self.deliver_frames(now);
                    let echo = match code {
                        Some(code) => ws::close_frame(code, ""),
                        None => ws::close_frame_without_code(),
                    };
                    self.close_ws(key, echo, "closed by peer", now);
                }
            }
            self.mark_dirty(key);
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.inbuf.drain(..consumed.min(conn.inbuf.len()));
            if conn.inbuf.is_empty() {
                self.spare_inbuf.recycle(&mut conn.inbuf);
            }
        }
        self.after_input(key, now);
    }

    /// Queues a close frame; the TCP connection closes once it is written.
    /// The chat sees the connection leave at once, not after the linger.
    pub(super) fn close_ws(&mut self, key: usize, frame: Vec<u8>, reason: &'static str, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let conn_ref = conn.conn_ref(key);
        let Protocol::WebSocket(socket) = &mut conn.protocol else {
            return;
        };
        if socket.close_after_flush {
            return;
        }
        socket.close_after_flush = true;
        let in_chat = std::mem::take(&mut socket.in_chat);
        conn.close_reason.get_or_insert(reason);
        conn.out.push(frame, &mut self.spare_rings);
        // The linger starts now and does not move (see `WsConn::deadline`).
        super::set_deadline(&mut self.timers, key, conn, Some(now.mono + super::LINGER));
        if in_chat {
            self.engine.ws_closed(conn_ref, now);
        }
        self.mark_dirty(key);
    }

    /// A WebSocket's timer fired: ping it, or give up on it.
    pub(super) fn ws_deadline(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Protocol::WebSocket(socket) = &mut conn.protocol else {
            return;
        };
        if socket.close_after_flush {
            // The peer never read our close.
            self.remove(key, "close not acknowledged");
        } else if socket.ping_outstanding {
            log::debug!("closing silent WebSocket {}", conn.who());
            self.close_ws(
                key,
                ws::close_frame(close_code::GOING_AWAY, "idle timeout"),
                "idle timeout",
                now,
            );
        } else {
            socket.ping_outstanding = true;
            conn.out.push(ws::ping_frame(b""), &mut self.spare_rings);
            self.mark_dirty(key);
            self.update_deadline(key, now);
        }
    }

    /// A connection whose unsent output passed the limit is closed (1008):
    /// whatever it is owed — broadcasts, pongs, errors — it must read, or
    /// it goes, and nobody else waits for it.
    fn enforce_outbound_limit(&mut self, key: usize, now: Now) {
        let over = |reactor: &Reactor| {
            reactor
                .conns
                .get(key)
                .is_some_and(|conn| conn.out.pending_bytes() > reactor.config.max_outbound_bytes)
        };
        if !over(self) {
            return;
        }
        // Only what the socket refuses counts: a reader that keeps up may be
        // owed more than the limit within one turn.
        self.flush(key, now);
        if !over(self) {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        log::info!(
            "closing slow consumer {}: {} bytes unsent",
            conn.who(),
            conn.out.pending_bytes()
        );
        self.metrics.frames_dropped += conn.out.discard_unsent() as u64;
        self.metrics.slow_consumer_closes += 1;
        self.close_ws(
            key,
            ws::close_frame(close_code::POLICY_VIOLATION, "slow consumer"),
            "slow consumer",
            now,
        );
    }

    /// Cluster mode lost its lease: other nodes may have released these
    /// connections' seats, so every WebSocket is closed (1011) and its
    /// client reconnects to a node that knows where it stands.
    pub(super) fn drop_all_websockets(&mut self, now: Now) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| matches!(conn.protocol, Protocol::WebSocket(_)))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            if let Some(Protocol::WebSocket(socket)) =
                self.conns.get_mut(key).map(|conn| &mut conn.protocol)
            {
                socket.in_chat = false;
            }
            let frame = ws::close_frame(close_code::INTERNAL_ERROR, "cluster lease lost");
            self.close_ws(key, frame, "cluster lease lost", now);
        }
    }

    /// Moves the API's frames into their connections' output queues. A
    /// connection too far behind is closed (1008) instead of growing.
    pub(super) fn deliver_frames(&mut self, now: Now) {
        loop {
            self.engine.swap_outbox(&mut self.outbox);
            if self.outbox.is_empty() {
                return;
            }
            let mut frames = std::mem::take(&mut self.outbox);
            for (conn_ref, frame) in frames.drain(..) {
                let (key, generation) = super::split_conn_ref(conn_ref);
                let Some(conn) = self.conns.get_mut(key) else {
                    continue;
                };
                let Protocol::WebSocket(socket) = &conn.protocol else {
                    continue;
                };
                if conn.generation != generation || socket.close_after_flush {
                    continue;
                }
                conn.out.push_shared(frame, &mut self.spare_rings);
                self.metrics.ws_messages_out += 1;
                self.mark_dirty(key);
                self.enforce_outbound_limit(key, now);
            }
            // Closing slow consumers may have produced `leave` frames.
            self.outbox = frames;
        }
    }
}
