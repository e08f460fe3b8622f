//! The reactor's HTTP side: requests parsed off a connection in order,
//! the header and body timeouts, keep-alive and close after the last
//! answer, routing (the WebSocket upgrade, the page, `/metrics`, the API),
//! and replies that wait on a helper thread.

use std::time::Instant;

use super::{Listener, Now, Protocol, Reactor, LINGER};
use crate::api::{ConnRef, Outcome};
use crate::config::Config;
use crate::http::forwarded::{self, ClientAddress};
use crate::http::request::{Event as HttpEvent, HttpError, HttpLimits, Request, RequestParser};
use crate::http::response::{Response, CONTINUE};

/// Pipelined requests are not parsed while this much output is unsent: a
/// client that sends without reading must not grow our memory.
const OUTPUT_PAUSE_BYTES: usize = 256 * 1024;

/// What the reply to an awaited request must look like once it arrives.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyShape {
    /// The endpoint, as a metrics label.
    pub(super) endpoint: &'static str,
    pub(super) head_only: bool,
    pub(super) keep_alive: bool,
    pub(super) http10: bool,
}

#[derive(Debug)]
pub(super) struct HttpConn {
    parser: RequestParser,
    /// When the bytes of the request being received started arriving (or
    /// when its head completed, for the body).
    request_started: Option<Instant>,
    pub(super) awaiting: Option<ReplyShape>,
    /// A request has been received: until then the connection has only the
    /// header timeout to show it is a client, not the keep-alive idle time.
    received_a_request: bool,
    /// Answer what is queued, then close.
    pub(super) close_after_flush: bool,
}

impl HttpConn {
    pub(super) fn new(limits: HttpLimits) -> HttpConn {
        HttpConn {
            parser: RequestParser::new(limits),
            request_started: None,
            awaiting: None,
            received_a_request: false,
            close_after_flush: false,
        }
    }

    /// Part of a request has arrived and the rest is owed: its timer is the
    /// request timeout (408), not the idle one.
    pub(super) fn receiving_request(&self) -> bool {
        self.request_started.is_some()
    }

    /// When the connection next needs the timer. A reply owed by a helper
    /// has no deadline: the wait is ours, not the client's.
    pub(super) fn deadline(
        &self,
        opened: Instant,
        last_activity: Instant,
        config: &Config,
    ) -> Option<Instant> {
        if self.awaiting.is_some() {
            None
        } else if let Some(started) = self.request_started {
            Some(started + config.header_timeout)
        } else if !self.received_a_request {
            Some(opened + config.header_timeout)
        } else {
            // Idle between requests, or waiting for the client to
            // read what we sent.
            Some(last_activity + config.keep_alive_timeout)
        }
    }
}

impl Reactor {
    pub(super) fn process_http(&mut self, key: usize, now: Now) {
        let mut consumed = 0;
        let mut failure = None;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Protocol::Http(http) = &mut conn.protocol else {
                break;
            };
            // Parse only as far as we may answer: not past a request whose
            // reply is still owed (replies go out in order), not past a
            // close, and not while the client is far behind in reading.
            if http.awaiting.is_some()
                || http.close_after_flush
                || conn.out.pending_bytes() > OUTPUT_PAUSE_BYTES
            {
                break;
            }
            let input = conn.inbuf.get(consumed..).unwrap_or_default();
            if http.request_started.is_none() && !input.is_empty() {
                http.request_started = Some(now.mono);
            }
            let was_in_body = http.parser.in_body();
            match http.parser.parse(input) {
                Ok((used, event)) => {
                    consumed += used;
                    match event {
                        None => {
                            if http.parser.in_body() && !was_in_body {
                                // The head is complete: the body gets its own timeout.
                                http.request_started = Some(now.mono);
                            }
                            if used == 0 {
                                break;
                            }
                        }
                        Some(HttpEvent::ContinueExpected) => {
                            http.request_started = Some(now.mono);
                            conn.out.push(CONTINUE.to_vec(), &mut self.spare_rings);
                            self.mark_dirty(key);
                        }
                        Some(HttpEvent::Request(request)) => {
                            http.request_started = None;
                            http.received_a_request = true;
                            self.dispatch(key, request, now);
                        }
                    }
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(key) {
            if consumed > 0 {
                conn.inbuf.drain(..consumed.min(conn.inbuf.len()));
            }
            if conn.inbuf.is_empty() {
                self.spare_inbuf.recycle(&mut conn.inbuf);
            }
        }
        if let Some(error) = failure {
            self.reject_request(key, error);
        }
        if self
            .conns
            .get(key)
            .is_some_and(|conn| matches!(conn.protocol, Protocol::WebSocket(_)))
        {
            // Upgraded: whatever followed the handshake is WebSocket data.
            self.process_ws(key, now);
            return;
        }
        self.after_input(key, now);
    }

    fn reject_request(&mut self, key: usize, error: HttpError) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Protocol::Http(http) = &mut conn.protocol else {
            return;
        };
        log::debug!("rejecting request from {}: {}", conn.peer, error.reason());
        let response = error.response();
        self.metrics.count_request("other", response.outcome);
        http.close_after_flush = true;
        conn.close_reason = Some(error.reason());
        http.request_started = None;
        conn.inbuf = Vec::new();
        conn.out.push(
            response.encode(false, false, false, &self.config.cors_origin),
            &mut self.spare_rings,
        );
        self.mark_dirty(key);
    }

    /// A request's head or body did not arrive in time: answer 408 and
    /// close once it is written.
    pub(super) fn request_timeout(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Protocol::Http(http) = &mut conn.protocol else {
            return;
        };
        log::debug!("request timeout for {}", conn.peer);
        let response = Response::res(408, "request timeout");
        self.metrics.count_request("other", "request timeout");
        http.close_after_flush = true;
        conn.close_reason = Some("request timeout");
        http.request_started = None;
        conn.inbuf = Vec::new();
        conn.out.push(
            response.encode(false, false, false, &self.config.cors_origin),
            &mut self.spare_rings,
        );
        super::set_deadline(&mut self.timers, key, conn, Some(now.mono + LINGER));
        self.mark_dirty(key);
    }

    fn dispatch(&mut self, key: usize, request: Request, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let client =
            forwarded::client_of_request(conn.peer.ip(), &self.config.trusted_proxies, &request);
        match client {
            ClientAddress::Peer(_) => {}
            ClientAddress::Forwarded(_) => self.metrics.forwarded_requests += 1,
            ClientAddress::Malformed(_) => {
                self.metrics.malformed_forwarding_headers += 1;
                log::debug!(
                    "unreadable X-Forwarded-For or X-Real-IP from trusted proxy {}; counting the request under the proxy's address",
                    conn.peer
                );
            }
        }
        conn.client = Some(client.ip()).filter(|ip| *ip != conn.peer.ip());
        let shape = ReplyShape {
            endpoint: crate::api::endpoint_label(request.path()),
            head_only: request.method == "HEAD",
            keep_alive: request.keep_alive(),
            http10: request.minor_version == 0,
        };
        if conn.listener == Listener::Ws || request.path() == "/ws" {
            self.upgrade(key, &request, now);
            return;
        }
        if let Some(response) = crate::web::respond(&request) {
            self.send_reply(key, shape, response);
            return;
        }
        if request.path() == "/metrics" {
            let response = match request.method.as_str() {
                "GET" | "HEAD" => self.metrics_response(),
                _ => Response::res(405, "method not allowed").with_header("Allow", "GET, HEAD"),
            };
            self.send_reply(key, shape, response);
            return;
        }
        let conn_ref = conn.conn_ref(key);
        match self.engine.handle(conn_ref, &request, client.ip(), now) {
            Outcome::Reply(response) => self.send_reply(key, shape, response),
            Outcome::Pending => {
                if let Protocol::Http(http) = &mut conn.protocol {
                    http.awaiting = Some(shape);
                }
            }
        }
    }

    pub(super) fn send_reply(&mut self, key: usize, shape: ReplyShape, response: Response) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Protocol::Http(http) = &mut conn.protocol else {
            return;
        };
        let keep_alive = shape.keep_alive && !conn.peer_closed && self.shutdown_deadline.is_none();
        self.metrics.count_request(shape.endpoint, response.outcome);
        conn.out.push(
            response.encode(
                shape.head_only,
                keep_alive,
                shape.http10,
                &self.config.cors_origin,
            ),
            &mut self.spare_rings,
        );
        if !keep_alive {
            http.close_after_flush = true;
            conn.close_reason
                .get_or_insert("response complete, not kept alive");
        }
        self.mark_dirty(key);
    }

    fn metrics_response(&self) -> Response {
        let mut gauges = self.engine.gauges();
        for (_, conn) in &self.conns {
            match conn.protocol {
                Protocol::WebSocket(_) => gauges.ws_connections += 1,
                Protocol::Http(_) => gauges.http_connections += 1,
                Protocol::Closing if conn.was_websocket => gauges.ws_connections += 1,
                Protocol::Closing => gauges.http_connections += 1,
            }
        }
        let mut response = Response::json(200, &()).with_outcome("metrics");
        response.content_type = "text/plain; version=0.0.4; charset=utf-8";
        response.body = self.metrics.render(gauges).into_bytes();
        response
    }

    /// Routes a reply that waited on a helper back to its connection, if
    /// that connection is still the one that asked.
    pub(super) fn deliver(&mut self, conn_ref: ConnRef, response: Response, now: Now) {
        let (key, generation) = super::split_conn_ref(conn_ref);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        let Protocol::Http(http) = &mut conn.protocol else {
            return;
        };
        let Some(shape) = http.awaiting.take() else {
            return;
        };
        self.send_reply(key, shape, response);
        // Pipelined requests held back behind this one can go now.
        self.process(key, now);
    }

    /// Everything queued is written. Pipelined input held back behind it
    /// may be parsed now, unless a reply is still owed: answers leave in
    /// request order.
    pub(super) fn http_flushed(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let Protocol::Http(http) = &conn.protocol else {
            return;
        };
        if http.awaiting.is_none() && !conn.inbuf.is_empty() {
            self.process(key, now);
        } else {
            self.update_deadline(key, now);
        }
    }

    /// Shutdown: an idle connection closes (once what it is owed is
    /// written); one with a request under way gets its answer first.
    pub(super) fn http_shutdown(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Protocol::Http(http) = &mut conn.protocol else {
            return;
        };
        let idle =
            http.awaiting.is_none() && http.request_started.is_none() && conn.inbuf.is_empty();
        if idle && conn.out.is_empty() {
            self.remove(key, "shutdown");
        } else if idle {
            http.close_after_flush = true;
            conn.close_reason.get_or_insert("shutdown");
            self.mark_dirty(key);
        }
    }
}
