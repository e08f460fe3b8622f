//! What the reactor serves requests and packets with: the embedded API on
//! its data directory and writer threads, or the cluster API on Redis. The
//! one place that tells the two apart; connection code calls these methods
//! and does not know which it has.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use mio::event::Event;
use mio::{Registry, Token};

use super::redis::RedisSocket;
use crate::api::{Api, ConnRef, Now, Outcome};
use crate::auth::{JobId, PasswordJob, PasswordOutcome};
use crate::cluster::ClusterApi;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::metrics::Gauges;
use crate::redis::{LinkEvent, Role};
use crate::store::{DataDir, LogWriter, Writer};

pub const REDIS_COMMANDS: Token = Token(usize::MAX - 5);
pub const REDIS_SUBSCRIBER: Token = Token(usize::MAX - 6);

pub(super) struct Embedded {
    pub(super) api: Api,
    pub(super) writer: Option<Writer>,
    pub(super) message_log: Option<LogWriter>,
    pub(super) _data_dir: DataDir,
}

pub(super) struct Cluster {
    pub(super) api: ClusterApi,
    commands: RedisSocket,
    subscriber: RedisSocket,
    events: Vec<LinkEvent>,
}

impl Cluster {
    pub(super) fn new(api: ClusterApi, redis: SocketAddr) -> Cluster {
        Cluster {
            api,
            commands: RedisSocket::new(REDIS_COMMANDS, redis),
            subscriber: RedisSocket::new(REDIS_SUBSCRIBER, redis),
            events: Vec::new(),
        }
    }

    /// Moves bytes and events between the links, their sockets and the
    /// chat until nothing is left to move.
    fn pump(&mut self, registry: &Registry, now: Now) {
        loop {
            let mut events = std::mem::take(&mut self.events);
            for role in [Role::Commands, Role::Subscriber] {
                let socket = match role {
                    Role::Commands => &mut self.commands,
                    Role::Subscriber => &mut self.subscriber,
                };
                let start = events.len();
                socket.pump(self.api.link_mut(role), registry, now.mono, &mut events);
                let taken: Vec<LinkEvent> = events.drain(start..).collect();
                for event in taken {
                    self.api.handle_link_event(role, event, now);
                }
            }
            self.events = events;
            let quiet = [Role::Commands, Role::Subscriber]
                .iter()
                .all(|role| !self.api.link(*role).has_events());
            if quiet {
                return;
            }
        }
    }
}

pub(super) enum Engine {
    Embedded(Box<Embedded>),
    Cluster(Box<Cluster>),
}

impl Engine {
    pub(super) fn handle(
        &mut self,
        conn: ConnRef,
        request: &Request,
        from: IpAddr,
        now: Now,
    ) -> Outcome {
        match self {
            Engine::Embedded(e) => e.api.handle(conn, request, from, now),
            Engine::Cluster(c) => c.api.handle(conn, request, from, now),
        }
    }

    pub(super) fn ws_open(&mut self, conn: ConnRef, url_token: Option<String>, now: Now) {
        match self {
            Engine::Embedded(e) => e.api.ws_open(conn, url_token, now),
            Engine::Cluster(c) => c.api.ws_open(conn, url_token, now),
        }
    }

    pub(super) fn ws_text(&mut self, conn: ConnRef, text: &str, now: Now) {
        match self {
            Engine::Embedded(e) => e.api.ws_text(conn, text, now),
            Engine::Cluster(c) => c.api.ws_text(conn, text, now),
        }
    }

    pub(super) fn ws_binary(&mut self, conn: ConnRef, now: Now) {
        match self {
            Engine::Embedded(e) => e.api.ws_binary(conn, now),
            Engine::Cluster(c) => c.api.ws_binary(conn, now),
        }
    }

    pub(super) fn ws_closed(&mut self, conn: ConnRef, now: Now) {
        match self {
            Engine::Embedded(e) => e.api.ws_closed(conn, now),
            Engine::Cluster(c) => c.api.ws_closed(conn, now),
        }
    }

    pub(super) fn ws_close_all(&mut self, now: Now) {
        match self {
            Engine::Embedded(e) => e.api.ws_close_all(now),
            Engine::Cluster(c) => c.api.ws_close_all(now),
        }
    }

    pub(super) fn swap_outbox(&mut self, empty: &mut Vec<(ConnRef, Rc<[u8]>)>) {
        match self {
            Engine::Embedded(e) => e.api.swap_outbox(empty),
            Engine::Cluster(c) => c.api.swap_outbox(empty),
        }
    }

    /// Work the next turn must pick up without waiting in poll: frames to
    /// deliver, passwords to hash, or (cluster mode) replies to hand out,
    /// link events to carry out, or commands a socket could take now. (A
    /// request held back on a keep-alive connection starts while the turn
    /// ends, after the pool and the links were served.)
    pub(super) fn has_turn_work(&self) -> bool {
        match self {
            Engine::Embedded(e) => e.api.has_outbox() || e.api.has_password_jobs(),
            Engine::Cluster(c) => {
                let commands = c.api.link(Role::Commands);
                let subscriber = c.api.link(Role::Subscriber);
                c.api.has_outbox()
                    || c.api.has_password_jobs()
                    || c.api.has_replies()
                    || commands.has_events()
                    || subscriber.has_events()
                    || c.commands.can_write(commands)
                    || c.subscriber.can_write(subscriber)
            }
        }
    }

    pub(super) fn tick(&mut self, now: Now) {
        match self {
            Engine::Embedded(e) => e.api.tick(now),
            Engine::Cluster(c) => {
                c.api.link_mut(Role::Commands).handle_timeout(now.mono);
                c.api.link_mut(Role::Subscriber).handle_timeout(now.mono);
                c.api.tick(now);
            }
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match self {
            Engine::Embedded(e) => e.api.next_deadline(),
            Engine::Cluster(c) => c.api.next_deadline(),
        }
    }

    pub(super) fn has_pending_work(&self) -> bool {
        match self {
            Engine::Embedded(e) => e.api.has_pending_work(),
            Engine::Cluster(c) => c.api.has_pending_work(),
        }
    }

    pub(super) fn take_password_jobs(&mut self) -> Vec<(JobId, PasswordJob)> {
        match self {
            Engine::Embedded(e) => e.api.take_password_jobs(),
            Engine::Cluster(c) => c.api.take_password_jobs(),
        }
    }

    pub(super) fn on_password_done(
        &mut self,
        job: JobId,
        outcome: PasswordOutcome,
        now: Now,
    ) -> Option<(ConnRef, Response)> {
        match self {
            Engine::Embedded(e) => e.api.on_password_done(job, outcome, now),
            Engine::Cluster(c) => c.api.on_password_done(job, outcome, now),
        }
    }

    /// Readiness on a Redis socket.
    pub(super) fn on_redis_ready(
        &mut self,
        event: &Event,
        registry: &Registry,
        scratch: &mut [u8],
        now: Now,
    ) {
        let Engine::Cluster(c) = self else {
            return;
        };
        let (socket, role) = match event.token() {
            REDIS_COMMANDS => (&mut c.commands, Role::Commands),
            _ => (&mut c.subscriber, Role::Subscriber),
        };
        socket.on_ready(c.api.link_mut(role), event, scratch, now.mono);
        c.pump(registry, now);
    }

    /// End of a turn: hand queued work to the writers or to Redis; the
    /// responses that became ready.
    pub(super) fn flush_work(&mut self, registry: &Registry, now: Now) -> Vec<(ConnRef, Response)> {
        match self {
            Engine::Embedded(e) => {
                if let Some((batch, records)) = e.api.take_persist_batch() {
                    if let Some(writer) = &e.writer {
                        writer.submit(batch, records);
                    }
                }
                Vec::new()
            }
            Engine::Cluster(c) => {
                c.pump(registry, now);
                c.api.take_replies()
            }
        }
    }

    /// The lease was lost (cluster mode): every WebSocket must close.
    pub(super) fn take_drop_all_websockets(&mut self) -> bool {
        match self {
            Engine::Embedded(_) => false,
            Engine::Cluster(c) => c.api.take_drop_all_websockets(),
        }
    }

    pub(super) fn gauges(&self) -> Gauges {
        match self {
            Engine::Embedded(e) => Gauges {
                rooms: e.api.state().room_count(),
                users: e.api.state().user_count(),
                seats: e.api.state().seats_held(),
                tokens: e.api.tokens().len(),
                messages_retained: e.api.retained_messages(),
                history_disk_bytes: e.message_log.as_ref().map_or(0, LogWriter::disk_bytes),
                history: e.api.history_counters(),
                ..Gauges::default()
            },
            Engine::Cluster(c) => Gauges {
                rooms: c.api.local_rooms(),
                history: crate::api::HistoryCounters {
                    recoveries_complete: c.api.counters().recoveries_complete,
                    recoveries_incomplete: c.api.counters().recoveries_incomplete,
                    messages_refused: c.api.counters().messages_refused,
                },
                cluster: Some(c.api.counters()),
                redis_up: c.api.is_serving(),
                ..Gauges::default()
            },
        }
    }

    /// Shutdown: let the writers finish.
    pub(super) fn finish(&mut self) {
        if let Engine::Embedded(e) = self {
            if let Some(writer) = e.writer.take() {
                writer.shutdown();
            }
            if let Some(log) = e.message_log.take() {
                log.shutdown();
            }
        }
    }

    pub(super) fn embedded(&mut self) -> Option<&mut Embedded> {
        match self {
            Engine::Embedded(e) => Some(e),
            Engine::Cluster(_) => None,
        }
    }
}
