//! The WebSocket chat protocol (SPEC §4): sessions, identity, join / leave /
//! msg, and what a dropped connection means for its rooms.

use std::rc::Rc;
use std::time::Instant;

use super::{Api, ConnRef, Now};
use crate::chat::packet::{self, ClientPacket, Echo, PacketError, PacketKind};
use crate::chat::state::{JoinKind, RoomId, UserId};

/// Rooms one connection may be in at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 16;

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub require_token: bool,
    /// Longest `msg`, in Unicode scalar values.
    pub max_msg_chars: usize,
    /// Sustained packets per second per connection; 0 turns the limit off.
    pub ws_rate: u32,
    /// Packets a connection may send in a burst.
    pub ws_burst: u32,
    /// Newest messages kept per room (0: history off, seqs still count).
    pub history_size: usize,
    /// Newest messages a joiner receives right after its `user` packet.
    pub history_on_join: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            require_token: false,
            max_msg_chars: 2000,
            ws_rate: 20,
            ws_burst: 40,
            history_size: 1000,
            history_on_join: 50,
        }
    }
}

/// A token bucket: `burst` packets at once, refilled at `rate` a second.
#[derive(Debug, Clone)]
pub struct RateBucket {
    tokens: f64,
    last: Instant,
}

impl RateBucket {
    pub fn new(burst: u32, now: Instant) -> RateBucket {
        RateBucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One WebSocket connection's part in the chat.
#[derive(Debug)]
pub(super) struct Session {
    /// Bound by the first successful join; never changes after.
    user: Option<UserId>,
    /// The avatar the client claimed when it bound, used when the user
    /// registered none.
    pub(super) claimed_avatar: String,
    url_token: Option<String>,
    rooms: Vec<RoomId>,
    bucket: RateBucket,
}

impl Api {
    /// A connection completed its WebSocket handshake.
    pub fn ws_open(&mut self, conn: ConnRef, url_token: Option<String>, now: Now) {
        let session = Session {
            user: None,
            claimed_avatar: String::new(),
            url_token,
            rooms: Vec::new(),
            bucket: RateBucket::new(self.config.chat.ws_burst, now.mono),
        };
        self.sessions.insert(conn, session);
    }

    /// A connection closed or dropped: it leaves every room it was in.
    pub fn ws_closed(&mut self, conn: ConnRef, now: Now) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        let Some(user) = session.user else {
            return;
        };
        for room in session.rooms {
            self.state.unsubscribe(room, conn, now.mono);
            let frame = self.user_frame(user, &session.claimed_avatar, room, "leave");
            self.broadcast(room, &frame);
        }
    }

    /// The server is stopping and every connection goes at once: nobody is
    /// left to tell, so no `leave` is sent (k closes would otherwise build
    /// k × members frames for connections that are closing anyway).
    pub fn ws_close_all(&mut self, now: Now) {
        for (conn, session) in self.sessions.drain() {
            for room in session.rooms {
                self.state.unsubscribe(room, conn, now.mono);
            }
        }
    }

    /// A binary message: the protocol is JSON text only.
    pub fn ws_binary(&mut self, conn: ConnRef, now: Now) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            let rate = self.config.chat.ws_rate;
            let burst = self.config.chat.ws_burst;
            session.bucket.take(rate, burst, now.mono);
        }
        self.emit(
            conn,
            packet::error_frame(PacketError::InvalidMessage, &Echo::default()),
        );
    }

    /// A text message: one packet.
    pub fn ws_text(&mut self, conn: ConnRef, text: &str, now: Now) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        // Every packet costs a token, valid or not, so a flood of garbage
        // drains the bucket as surely as a flood of messages.
        let within_rate = session.bucket.take(
            self.config.chat.ws_rate,
            self.config.chat.ws_burst,
            now.mono,
        );
        let packet = match packet::parse(text) {
            Ok(packet) => packet,
            Err((error, echo)) => {
                self.emit(conn, packet::error_frame(error, &echo));
                return;
            }
        };
        if let Err(error) = self.apply(conn, &packet, within_rate, now) {
            let echo = Echo {
                user_name: packet.user_name,
                user_avatar: packet.user_avatar,
                room_name: packet.room_name,
            };
            self.emit(conn, packet::error_frame(error, &echo));
        }
    }

    /// The identity checks: who this packet speaks for.
    fn identify(
        &self,
        conn: ConnRef,
        packet: &ClientPacket,
        now: Now,
    ) -> Result<UserId, PacketError> {
        let session = self.sessions.get(&conn).ok_or(PacketError::Unauthorized)?;
        let token = packet.token.as_deref().or(session.url_token.as_deref());
        let user = match token {
            Some(token) => {
                let user = self
                    .tokens
                    .user_of(token, now.mono)
                    .ok_or(PacketError::Unauthorized)?;
                let registered = self.state.user(user).ok_or(PacketError::Unauthorized)?;
                if registered.name != packet.user_name {
                    return Err(PacketError::UserMismatch);
                }
                user
            }
            None if self.config.chat.require_token => return Err(PacketError::Unauthorized),
            None => self
                .state
                .user_id_by_name(&packet.user_name)
                .ok_or(PacketError::UserNotExist)?,
        };
        match session.user {
            Some(bound) if bound != user => Err(PacketError::UserMismatch),
            _ => Ok(user),
        }
    }

    fn apply(
        &mut self,
        conn: ConnRef,
        packet: &ClientPacket,
        within_rate: bool,
        now: Now,
    ) -> Result<(), PacketError> {
        let user = self.identify(conn, packet, now)?;
        let room = self
            .state
            .room_id(&packet.room_name)
            .ok_or(PacketError::InvalidRoom)?;
        let session = self.sessions.get(&conn).ok_or(PacketError::Unauthorized)?;
        let joined = session.rooms.contains(&room);
        match packet.kind {
            PacketKind::Join => {
                if joined {
                    if !within_rate {
                        return Err(PacketError::RateLimited);
                    }
                    let avatar = session.claimed_avatar.clone();
                    let frame = self.user_frame(user, &avatar, room, "join");
                    self.emit(conn, frame);
                    return Ok(());
                }
                let holds_seat = self.state.holds_seat(room, user);
                if !holds_seat && self.state.room(room).is_some_and(|r| r.is_full()) {
                    return Err(PacketError::FullRoom);
                }
                if session.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
                    return Err(PacketError::TooManyRooms);
                }
                if !within_rate {
                    return Err(PacketError::RateLimited);
                }
                let kind = self
                    .state
                    .subscribe(room, conn, user)
                    .ok_or(PacketError::InvalidRoom)?;
                let session = self
                    .sessions
                    .get_mut(&conn)
                    .ok_or(PacketError::Unauthorized)?;
                if session.user.is_none() {
                    session.user = Some(user);
                    session.claimed_avatar = packet.user_avatar.clone();
                }
                session.rooms.push(room);
                let avatar = session.claimed_avatar.clone();
                let msg = match kind {
                    JoinKind::Create => "create",
                    JoinKind::Join => "join",
                };
                let frame = self.user_frame(user, &avatar, room, msg);
                self.broadcast(room, &frame);
                let (name, avatar) = self.display_identity(user, &avatar);
                let echo = Echo {
                    user_name: name.to_string(),
                    user_avatar: avatar.to_string(),
                    room_name: packet.room_name.clone(),
                };
                self.send_join_history(conn, room, packet.since, &echo);
            }
            PacketKind::Leave => {
                if !joined {
                    return Err(PacketError::NotInRoom);
                }
                if !within_rate {
                    return Err(PacketError::RateLimited);
                }
                let avatar = session.claimed_avatar.clone();
                let frame = self.user_frame(user, &avatar, room, "leave");
                self.broadcast(room, &frame);
                // Unlike a dropped connection, a `leave` is a decision: the
                // original Android app never sends the HTTP leave, so a seat
                // kept for the TTL would show people who left.
                self.state.leave(room, conn, now.mono);
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.rooms.retain(|r| *r != room);
                }
            }
            PacketKind::Msg => {
                if !joined {
                    return Err(PacketError::NotInRoom);
                }
                if packet.msg.chars().count() > self.config.chat.max_msg_chars {
                    return Err(PacketError::MessageTooLong);
                }
                if !within_rate {
                    return Err(PacketError::RateLimited);
                }
                let claimed = session.claimed_avatar.clone();
                self.accept_message(room, user, &claimed, &packet.msg, now)?;
            }
        }
        Ok(())
    }

    /// The name and avatar outgoing packets carry for a user: the
    /// registered avatar if there is one, else what the client claimed.
    pub(super) fn display_identity<'a>(
        &'a self,
        user: UserId,
        claimed_avatar: &'a str,
    ) -> (&'a str, &'a str) {
        match self.state.user(user) {
            Some(registered) if !registered.avatar_url.is_empty() => {
                (&registered.name, &registered.avatar_url)
            }
            Some(registered) => (&registered.name, claimed_avatar),
            None => ("", claimed_avatar),
        }
    }

    fn user_frame(&self, user: UserId, claimed_avatar: &str, room: RoomId, msg: &str) -> Rc<[u8]> {
        let (name, avatar) = self.display_identity(user, claimed_avatar);
        let room_name = self
            .state
            .room(room)
            .map(|r| r.name.as_str())
            .unwrap_or_default();
        packet::server_frame("user", name, avatar, room_name, msg, None)
    }

    /// `/chatroom/room` status 0: the seat goes, and so do the user's
    /// connections in that room, with a `leave` everyone there sees.
    pub(super) fn release_seat_and_evict(&mut self, room: RoomId, user: UserId, _now: Now) -> bool {
        if !self.state.holds_seat(room, user) {
            return false;
        }
        let members: Vec<ConnRef> = self
            .state
            .room(room)
            .map(|r| r.members().iter().map(|(conn, _)| *conn).collect())
            .unwrap_or_default();
        let evicted = self.state.release_seat(room, user).unwrap_or_default();
        if let Some(first) = evicted.first() {
            let claimed = self
                .sessions
                .get(first)
                .map(|s| s.claimed_avatar.clone())
                .unwrap_or_default();
            let frame = self.user_frame(user, &claimed, room, "leave");
            for member in members {
                self.emit(member, Rc::clone(&frame));
            }
        }
        for conn in evicted {
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.rooms.retain(|r| *r != room);
            }
        }
        true
    }

    /// Hands over the frames produced since the last call, each addressed
    /// to one connection, by swapping with `empty` (whose allocation the
    /// API keeps for the next ones).
    pub fn swap_outbox(&mut self, empty: &mut Vec<(ConnRef, Rc<[u8]>)>) {
        std::mem::swap(&mut self.outbox, empty);
    }

    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    pub fn ws_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The user a connection is bound to (`None` before its first join) and
    /// the rooms it is in, in joining order; `None` for no such session.
    /// For invariant checks: every room listed must list the connection.
    pub fn ws_session(&self, conn: ConnRef) -> Option<(Option<UserId>, &[RoomId])> {
        self.sessions
            .get(&conn)
            .map(|session| (session.user, session.rooms.as_slice()))
    }
}
