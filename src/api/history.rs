//! Chat messages with seqs, their way to the log, history on join, `since`
//! recovery, and the `/chatroom/history` and `/chatroom/members` endpoints
//! (SPEC §8).
//!
//! A message waits for its write: its record goes to the log writer
//! (`poll_message_append`), and every frame produced from then on — the
//! message's own broadcast and whatever follows it — is held in order until
//! `handle_messages_written` says the operating system has the record. So
//! no client ever receives a message a `kill -9` could lose, and no frame
//! overtakes one produced before it. Recipients are chosen when the frame
//! is produced, as for every other frame: a joiner is either a member when
//! the message is accepted (it gets it live) or joins after (it gets it as
//! history), never both and never neither.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::{invalid, Api, ConnRef, Now, Outcome};
use crate::chat::history::{Anchor, RoomHistory};
use crate::chat::packet::{self, Echo, PacketError};
use crate::chat::state::{RoomId, UserId};
use crate::chat::validate;
use crate::http::params::Params;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::store::{AppendId, MessageRecord, RoomLog};

/// Accepted messages the log may be behind by before new ones are refused
/// ("service unavailable"): a stalled disk must not grow memory forever.
const MAX_UNWRITTEN: usize = 65_536;

/// `/chatroom/history` page size: default and most.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 100;

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCounters {
    pub recoveries_complete: u64,
    pub recoveries_incomplete: u64,
    /// Messages refused because the log could not keep up or write.
    pub messages_refused: u64,
}

type Frames = Vec<(ConnRef, Rc<[u8]>)>;

/// One append handed to the log writer: its id, how many records it holds,
/// and the newest seq it writes per room.
type InFlight = (AppendId, usize, Vec<(RoomId, u64)>);

/// Where accepted messages are on their way to the log, and the frames
/// that wait for them.
#[derive(Debug)]
pub(super) struct MessageFlow {
    /// Records accepted since the last `poll_message_append`.
    unsubmitted: Vec<MessageRecord>,
    /// The newest seq per room among `unsubmitted`.
    unsubmitted_marks: Vec<(RoomId, u64)>,
    /// The id the records accepted now will be appended under.
    current: AppendId,
    /// Appends handed to the writer, oldest first: how many records each
    /// holds and the seqs it makes written.
    in_flight: VecDeque<InFlight>,
    /// Records accepted and not yet written.
    unwritten: usize,
    /// Frames produced after a message not yet written, oldest first, each
    /// group waiting for one append.
    held: VecDeque<(AppendId, Frames)>,
    /// Emptied groups, kept so that steady traffic allocates none.
    spare: Vec<Frames>,
    /// The writer reported a failure and has not written since.
    failing: bool,
    counters: HistoryCounters,
}

impl Default for MessageFlow {
    fn default() -> Self {
        MessageFlow {
            unsubmitted: Vec::new(),
            unsubmitted_marks: Vec::new(),
            current: 1,
            in_flight: VecDeque::new(),
            unwritten: 0,
            held: VecDeque::new(),
            spare: Vec::new(),
            failing: false,
            counters: HistoryCounters::default(),
        }
    }
}

impl MessageFlow {
    pub(super) fn has_unwritten(&self) -> bool {
        self.unwritten > 0
    }

    /// Frames from now on wait for the current append.
    fn hold_from_here(&mut self) {
        if self.held.back().is_some_and(|(id, _)| *id == self.current) {
            return;
        }
        let frames = self.spare.pop().unwrap_or_default();
        self.held.push_back((self.current, frames));
    }
}

/// A retained `msg` frame read back for `/chatroom/history`: the packet's
/// `data` with the fields a page row carries, in the order it writes them.
#[derive(Deserialize)]
pub(crate) struct StoredPacket<'a> {
    #[serde(borrow)]
    pub(crate) data: Row<'a>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Row<'a> {
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    #[serde(borrow)]
    pub(crate) user: RowUser<'a>,
    #[serde(borrow)]
    pub(crate) msg: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RowUser<'a> {
    #[serde(borrow)]
    pub(crate) user_name: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) user_avatar: Cow<'a, str>,
}

#[derive(Serialize)]
pub(crate) struct HistoryReply<'a> {
    pub(crate) res: &'a str,
    pub(crate) room_name: &'a str,
    pub(crate) messages: Vec<Row<'a>>,
    pub(crate) has_more: bool,
}

#[derive(Serialize)]
pub(crate) struct Member<'a> {
    pub(crate) user_name: &'a str,
    pub(crate) user_avatar: &'a str,
    pub(crate) online: bool,
}

#[derive(Serialize)]
pub(crate) struct MembersReply<'a> {
    pub(crate) res: &'a str,
    pub(crate) room_name: &'a str,
    pub(crate) population: usize,
    pub(crate) members: Vec<Member<'a>>,
}

pub(crate) fn optional_seq(params: &Params, field: &str) -> Result<Option<u64>, Response> {
    match params.get(field) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<u64>()
            .map(Some)
            .map_err(|_| invalid(format!("{field}: must be a whole number (a seq)"))),
    }
}

pub(crate) fn page_limit(params: &Params) -> Result<usize, Response> {
    match params.get("limit") {
        None | Some("") => Ok(DEFAULT_PAGE),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(invalid(
                "limit: must be a whole number from 1 to 100".to_string(),
            )),
        },
    }
}

impl Api {
    /// Queues a frame for a WebSocket connection, behind any message that
    /// is not written yet.
    pub(super) fn emit(&mut self, conn: ConnRef, frame: Rc<[u8]>) {
        match self.messages.held.back_mut() {
            Some((_, frames)) => frames.push((conn, frame)),
            None => self.outbox.push((conn, frame)),
        }
    }

    /// Queues one frame for every connection in the room.
    pub(super) fn broadcast(&mut self, room: RoomId, frame: &Rc<[u8]>) {
        let Some(room) = self.state.room(room) else {
            return;
        };
        let members = room.members().iter().map(|(member, _)| *member);
        match self.messages.held.back_mut() {
            Some((_, frames)) => frames.extend(members.map(|m| (m, Rc::clone(frame)))),
            None => self.outbox.extend(members.map(|m| (m, Rc::clone(frame)))),
        }
    }

    /// A `msg` the checks accepted: it gets the room's next seq, enters the
    /// history, goes to the log, and is broadcast once written.
    pub(super) fn accept_message(
        &mut self,
        room: RoomId,
        user: UserId,
        claimed_avatar: &str,
        text: &str,
        now: Now,
    ) -> Result<(), PacketError> {
        if self.messages.failing || self.messages.unwritten >= MAX_UNWRITTEN {
            self.messages.counters.messages_refused += 1;
            return Err(PacketError::ServiceUnavailable);
        }
        let (name, avatar) = self.display_identity(user, claimed_avatar);
        let (name, avatar) = (name.to_string(), avatar.to_string());
        let capacity = self.config.chat.history_size;
        let room_name = self
            .state
            .room(room)
            .map(|r| r.name.clone())
            .ok_or(PacketError::InvalidRoom)?;
        let history = self
            .state
            .history_mut(room)
            .ok_or(PacketError::InvalidRoom)?;
        let seq = history.next_seq();
        let frame = packet::msg_frame(&name, &avatar, &room_name, text, now.unix_ms, seq);
        history.push(Rc::clone(&frame), capacity);

        let flow = &mut self.messages;
        flow.unwritten += 1;
        match flow.unsubmitted_marks.iter_mut().find(|(r, _)| *r == room) {
            Some((_, newest)) => *newest = seq,
            None => flow.unsubmitted_marks.push((room, seq)),
        }
        flow.unsubmitted.push(MessageRecord {
            room: room_name,
            seq,
            ts: now.unix_ms,
            user_name: name,
            user_avatar: avatar,
            msg: text.to_string(),
        });
        flow.hold_from_here();
        self.broadcast(room, &frame);
        Ok(())
    }

    /// Right after a new join's `user` packet: the newest messages, or
    /// exactly those after `since` (SPEC §8), to the joiner alone.
    pub(super) fn send_join_history(
        &mut self,
        conn: ConnRef,
        room: RoomId,
        since: Option<u64>,
        echo: &Echo,
    ) {
        let Some(history) = self.state.room(room).map(|r| r.history()) else {
            return;
        };
        let (seqs, incomplete) = match since {
            None => (history.newest(self.config.chat.history_on_join), None),
            Some(since) => {
                let recovery = history.recover(since);
                let incomplete = recovery.incomplete.then(|| {
                    packet::history_incomplete_frame(
                        echo,
                        since,
                        recovery.seqs.start,
                        history.last_seq(),
                    )
                });
                (recovery.seqs, incomplete)
            }
        };
        let frames: Vec<Rc<[u8]>> = seqs
            .filter_map(|seq| history.frame(seq))
            .map(|live| packet::history_frame(live))
            .collect();
        if since.is_some() {
            let counters = &mut self.messages.counters;
            match incomplete {
                Some(_) => counters.recoveries_incomplete += 1,
                None => counters.recoveries_complete += 1,
            }
        }
        if let Some(error) = incomplete {
            self.emit(conn, error);
        }
        for frame in frames {
            self.emit(conn, frame);
        }
    }

    /// The messages accepted since the last call, as one append for the
    /// log writer; their frames wait for `handle_messages_written(id)`.
    pub fn poll_message_append(&mut self) -> Option<(AppendId, Vec<MessageRecord>)> {
        let flow = &mut self.messages;
        if flow.unsubmitted.is_empty() {
            return None;
        }
        let id = flow.current;
        flow.current += 1;
        let marks = std::mem::take(&mut flow.unsubmitted_marks);
        let records = std::mem::take(&mut flow.unsubmitted);
        flow.in_flight.push_back((id, records.len(), marks));
        Some((id, records))
    }

    /// The operating system has every append up to `id`: their messages
    /// and the frames behind them go out.
    pub fn handle_messages_written(&mut self, id: AppendId) {
        if self.messages.failing {
            log::info!("message log writes again");
            self.messages.failing = false;
        }
        while self
            .messages
            .in_flight
            .front()
            .is_some_and(|(append, _, _)| *append <= id)
        {
            let Some((_, records, marks)) = self.messages.in_flight.pop_front() else {
                break;
            };
            self.messages.unwritten = self.messages.unwritten.saturating_sub(records);
            for (room, seq) in marks {
                if let Some(history) = self.state.history_mut(room) {
                    history.mark_written(seq);
                }
            }
        }
        while self
            .messages
            .held
            .front()
            .is_some_and(|(append, _)| *append <= id)
        {
            let Some((_, mut frames)) = self.messages.held.pop_front() else {
                break;
            };
            self.outbox.append(&mut frames);
            self.messages.spare.push(frames);
        }
    }

    /// The log cannot write: new messages are refused until it can.
    pub fn handle_message_write_failing(&mut self, id: AppendId, error: &str) {
        if !self.messages.failing {
            log::error!(
                "message log write {id} failed, refusing messages until it recovers: {error}"
            );
        }
        self.messages.failing = true;
    }

    /// Start-up: the history the log replayed, room by room.
    pub fn restore_history(&mut self, logs: HashMap<String, RoomLog>) {
        let capacity = self.config.chat.history_size;
        for (room_name, log) in logs {
            let Some(room) = self.state.room_id(&room_name) else {
                log::warn!(
                    "message log holds {} message(s) of room {room_name:?}, which does not exist; ignored",
                    log.messages.len()
                );
                continue;
            };
            let Some(history) = self.state.history_mut(room) else {
                continue;
            };
            let skip = log.messages.len().saturating_sub(capacity);
            for record in log.messages.into_iter().skip(skip) {
                let frame = packet::msg_frame(
                    &record.user_name,
                    &record.user_avatar,
                    &room_name,
                    &record.msg,
                    record.ts,
                    record.seq,
                );
                history.restore(record.seq, frame, capacity);
            }
            history.finish_restore(log.last_seq);
        }
    }

    pub fn history_counters(&self) -> HistoryCounters {
        self.messages.counters
    }

    /// Messages held in memory for history, over all rooms.
    pub fn retained_messages(&self) -> usize {
        self.state
            .rooms()
            .map(|room| room.history().retained_len())
            .sum()
    }

    /// `--require-token` covers history and members: a valid token as the
    /// `token` parameter or `Authorization: Bearer`.
    fn authorized(&self, request: &Request, params: &Params, now: Now) -> bool {
        if !self.config.chat.require_token {
            return true;
        }
        let bearer = request.header("authorization").and_then(|value| {
            let (scheme, token) = std::str::from_utf8(value).ok()?.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
        params
            .get("token")
            .filter(|t| !t.is_empty())
            .or(bearer)
            .is_some_and(|token| self.tokens.user_of(token, now.mono).is_some())
    }

    /// What both room queries check first: the token when one is required
    /// (401), then the room name (400).
    fn room_query<'p>(
        &self,
        request: &Request,
        params: &'p Params,
        now: Now,
    ) -> Result<&'p str, Response> {
        if !self.authorized(request, params, now) {
            return Err(Response::res(401, "unauthorized"));
        }
        super::required(params, "room_name", validate::room_name)
    }

    /// `/chatroom/history`: a page of written, retained messages.
    pub(super) fn history(
        &self,
        request: &Request,
        params: &Params,
        now: Now,
    ) -> Result<Outcome, Response> {
        let room_name = self.room_query(request, params, now)?;
        let before = optional_seq(params, "before")?;
        let after = optional_seq(params, "after")?;
        let limit = page_limit(params)?;
        let anchor = match (before, after) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "before, after: give one of them, not both".to_string(),
                ))
            }
            (Some(before), None) => Anchor::Before(before),
            (None, Some(after)) => Anchor::After(after),
            (None, None) => Anchor::Newest,
        };
        let Some(room) = self.state.room_named(room_name) else {
            return Ok(Outcome::Reply(Response::res(200, "invalid room")));
        };
        let history: &RoomHistory = room.history();
        let page = history.page(anchor, limit);
        let mut messages = Vec::with_capacity(page.seqs.clone().count());
        for seq in page.seqs {
            let Some(frame) = history.frame(seq) else {
                continue;
            };
            match serde_json::from_slice::<StoredPacket>(packet::frame_payload(frame)) {
                Ok(stored) => messages.push(stored.data),
                Err(e) => log::error!("retained message {seq} of {room_name:?} unreadable: {e}"),
            }
        }
        let reply = HistoryReply {
            res: "get history successfully",
            room_name: &room.name,
            messages,
            has_more: page.has_more,
        };
        Ok(Outcome::Reply(
            Response::json(200, &reply).with_outcome("get history successfully"),
        ))
    }

    /// `/chatroom/members`: one entry per seat, online or seat only.
    pub(super) fn members(
        &self,
        request: &Request,
        params: &Params,
        now: Now,
    ) -> Result<Outcome, Response> {
        let room_name = self.room_query(request, params, now)?;
        let Some(room) = self.state.room_named(room_name) else {
            return Ok(Outcome::Reply(Response::res(200, "invalid room")));
        };
        let mut members: Vec<Member> = room
            .seats()
            .filter_map(|(user, online)| {
                let registered = self.state.user(user)?;
                // What the room's packets show for this user: the registered
                // avatar, else the one a connection of theirs claimed.
                let claimed = || {
                    room.members()
                        .iter()
                        .filter(|(_, member)| *member == user)
                        .find_map(|(conn, _)| self.sessions.get(conn))
                        .map(|session| session.claimed_avatar.as_str())
                        .unwrap_or_default()
                };
                let user_avatar = if registered.avatar_url.is_empty() {
                    claimed()
                } else {
                    registered.avatar_url.as_str()
                };
                Some(Member {
                    user_name: &registered.name,
                    user_avatar,
                    online,
                })
            })
            .collect();
        members.sort_unstable_by(|a, b| a.user_name.cmp(b.user_name));
        let reply = MembersReply {
            res: "get members successfully",
            room_name: &room.name,
            population: room.population(),
            members,
        };
        Ok(Outcome::Reply(
            Response::json(200, &reply).with_outcome("get members successfully"),
        ))
    }
}
