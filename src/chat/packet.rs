//! The chat packets of SPEC §4: reading what clients send, in the order the
//! error table checks it, and writing what the server sends.

use std::borrow::Cow;
use std::fmt;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ws;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Join,
    Leave,
    Msg,
}

/// A structurally valid client packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPacket {
    pub kind: PacketKind,
    pub user_name: String,
    /// Empty when absent.
    pub user_avatar: String,
    pub room_name: String,
    /// Empty when absent (join and leave need none).
    pub msg: String,
    pub token: Option<String>,
    /// `join` only: the newest seq the client has already seen (SPEC §8).
    pub since: Option<u64>,
}

/// Every error a packet can earn; `Display` is the wire string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    InvalidMessage,
    InvalidType,
    InvalidData,
    IllegalData,
    NullMessage,
    Unauthorized,
    UserNotExist,
    UserMismatch,
    InvalidRoom,
    FullRoom,
    NotInRoom,
    TooManyRooms,
    MessageTooLong,
    RateLimited,
    /// Messages cannot be stored right now (the log cannot be written).
    ServiceUnavailable,
}

impl PacketError {
    pub fn as_str(self) -> &'static str {
        match self {
            PacketError::InvalidMessage => "invalid message",
            PacketError::InvalidType => "invalid type",
            PacketError::InvalidData => "invalid data",
            PacketError::IllegalData => "illegal data",
            PacketError::NullMessage => "null message",
            PacketError::Unauthorized => "unauthorized",
            PacketError::UserNotExist => "user not exist",
            PacketError::UserMismatch => "user mismatch",
            PacketError::InvalidRoom => "invalid room",
            PacketError::FullRoom => "full room",
            PacketError::NotInRoom => "not in room",
            PacketError::TooManyRooms => "too many rooms",
            PacketError::MessageTooLong => "message too long",
            PacketError::RateLimited => "rate limited",
            PacketError::ServiceUnavailable => "service unavailable",
        }
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an error packet echoes back: whatever the client sent for the user
/// and the room, when it was a string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Echo {
    pub user_name: String,
    pub user_avatar: String,
    pub room_name: String,
}

fn string_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn echo_of(data: Option<&Value>) -> Echo {
    let Some(data) = data else {
        return Echo::default();
    };
    let user = data.get("user");
    Echo {
        user_name: user
            .and_then(|u| string_at(u, "user_name"))
            .unwrap_or_default()
            .to_string(),
        user_avatar: user
            .and_then(|u| string_at(u, "user_avatar"))
            .unwrap_or_default()
            .to_string(),
        room_name: string_at(data, "room_name").unwrap_or_default().to_string(),
    }
}

/// Reads a text frame as a packet, applying the structural checks of the
/// error table in order (`invalid message` … `null message`). On error, the
/// echo fields to put in the error packet come along.
pub fn parse(text: &str) -> Result<ClientPacket, (PacketError, Echo)> {
    if let Some(packet) = parse_well_formed(text) {
        return Ok(packet);
    }
    parse_checked(text)
}

/// The common case, a packet with every field of the right type, read
/// without building a JSON tree. Anything else (including every error)
/// returns `None` and goes through `parse_checked`, which alone decides
/// the outcome of an unusual packet.
fn parse_well_formed(text: &str) -> Option<ClientPacket> {
    #[derive(Deserialize)]
    struct In<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        data: InData<'a>,
    }
    #[derive(Deserialize)]
    struct InData<'a> {
        #[serde(borrow)]
        user: InUser<'a>,
        #[serde(borrow)]
        room_name: Cow<'a, str>,
        #[serde(borrow, default)]
        msg: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        token: Option<Cow<'a, str>>,
        #[serde(default)]
        since: Option<u64>,
    }
    #[derive(Deserialize)]
    struct InUser<'a> {
        #[serde(borrow)]
        user_name: Cow<'a, str>,
        #[serde(borrow, default)]
        user_avatar: Option<Cow<'a, str>>,
    }

    // serde reads a JSON array into a struct too, where the table says
    // "invalid message" or "invalid data": only array-free text is eligible.
    if !text.trim_start().starts_with('{') || has_array_outside_strings(text) {
        return None;
    }
    let packet: In = serde_json::from_str(text).ok()?;
    let kind = match packet.kind.as_ref() {
        "join" => PacketKind::Join,
        "leave" => PacketKind::Leave,
        "msg" => PacketKind::Msg,
        _ => return None,
    };
    let data = packet.data;
    let msg = data.msg.unwrap_or_default();
    if data.user.user_name.is_empty() || data.room_name.is_empty() {
        return None;
    }
    if kind == PacketKind::Msg && msg.is_empty() {
        return None;
    }
    Some(ClientPacket {
        kind,
        user_name: data.user.user_name.into_owned(),
        user_avatar: data.user.user_avatar.unwrap_or_default().into_owned(),
        room_name: data.room_name.into_owned(),
        msg: msg.into_owned(),
        token: data.token.map(Cow::into_owned),
        since: data.since,
    })
}

/// Whether a `[` appears outside JSON string literals.
fn has_array_outside_strings(text: &str) -> bool {
    // The byte-wise scan costs microseconds on a long message; most texts
    // have no bracket at all, which a memchr-speed search settles.
    if !text.as_bytes().contains(&b'[') {
        return false;
    }
    let mut in_string = false;
    let mut escaped = false;
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if byte == b'[' {
            return true;
        }
    }
    false
}

/// Every check of the error table, in order, over the parsed JSON tree.
fn parse_checked(text: &str) -> Result<ClientPacket, (PacketError, Echo)> {
    let Ok(Value::Object(root)) = serde_json::from_str::<Value>(text) else {
        return Err((PacketError::InvalidMessage, Echo::default()));
    };
    let data = root.get("data");
    let echo = || echo_of(data);
    let (Some(Value::String(kind)), Some(data @ Value::Object(_))) = (root.get("type"), data)
    else {
        return Err((PacketError::InvalidMessage, echo()));
    };
    let kind = match kind.as_str() {
        "join" => PacketKind::Join,
        "leave" => PacketKind::Leave,
        "msg" => PacketKind::Msg,
        _ => return Err((PacketError::InvalidType, echo())),
    };
    let invalid_data = || Err((PacketError::InvalidData, echo()));
    let Some(user @ Value::Object(_)) = data.get("user") else {
        return invalid_data();
    };
    let Some(Value::String(user_name)) = user.get("user_name") else {
        return invalid_data();
    };
    let user_avatar = match user.get("user_avatar") {
        None | Some(Value::Null) => "",
        Some(Value::String(avatar)) => avatar.as_str(),
        Some(_) => return invalid_data(),
    };
    let Some(Value::String(room_name)) = data.get("room_name") else {
        return invalid_data();
    };
    let msg = match (kind, data.get("msg")) {
        (_, Some(Value::String(msg))) => msg.as_str(),
        (PacketKind::Msg, _) => return invalid_data(),
        (_, _) => "",
    };
    let token = match data.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => Some(token.clone()),
        Some(_) => return invalid_data(),
    };
    let since = match data.get("since") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(since) => Some(since),
            None => return invalid_data(),
        },
        Some(_) => return invalid_data(),
    };
    if user_name.is_empty() || room_name.is_empty() {
        return Err((PacketError::IllegalData, echo()));
    }
    if kind == PacketKind::Msg && msg.is_empty() {
        return Err((PacketError::NullMessage, echo()));
    }
    Ok(ClientPacket {
        kind,
        user_name: user_name.clone(),
        user_avatar: user_avatar.to_string(),
        room_name: room_name.clone(),
        msg: msg.to_string(),
        token,
        since,
    })
}

#[derive(Serialize)]
struct OutUser<'a> {
    user_name: &'a str,
    user_avatar: &'a str,
}

#[derive(Serialize)]
struct OutData<'a> {
    user: OutUser<'a>,
    room_name: &'a str,
    msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[derive(Serialize)]
struct OutPacket<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: OutData<'a>,
}

/// Room a server frame's length header in front of the JSON, so the frame is
/// built in one buffer.
const HEADER_ROOM: usize = ws::frame::MAX_SERVER_HEADER_LEN;

/// A server packet as a complete WebSocket text frame, built once and shared
/// by every recipient.
pub fn server_frame(
    kind: &str,
    user_name: &str,
    user_avatar: &str,
    room_name: &str,
    msg: &str,
    ts: Option<u64>,
) -> Rc<[u8]> {
    let packet = OutPacket {
        kind,
        data: OutData {
            user: OutUser {
                user_name,
                user_avatar,
            },
            room_name,
            msg,
            ts,
            seq: None,
        },
    };
    frame_of(&packet)
}

/// A chat message as every member receives it live: `data.ts` and
/// `data.seq` (SPEC §8).
pub fn msg_frame(
    user_name: &str,
    user_avatar: &str,
    room_name: &str,
    msg: &str,
    ts: u64,
    seq: u64,
) -> Rc<[u8]> {
    let packet = OutPacket {
        kind: "msg",
        data: OutData {
            user: OutUser {
                user_name,
                user_avatar,
            },
            room_name,
            msg,
            ts: Some(ts),
            seq: Some(seq),
        },
    };
    frame_of(&packet)
}

/// The error a joiner gets first when `since` cannot be recovered in full:
/// `first_seq..=last_seq` is what follows (empty when `first_seq` is past
/// `last_seq`).
pub fn history_incomplete_frame(
    echo: &Echo,
    since: u64,
    first_seq: u64,
    last_seq: u64,
) -> Rc<[u8]> {
    #[derive(Serialize)]
    struct Data<'a> {
        user: OutUser<'a>,
        room_name: &'a str,
        msg: &'a str,
        since: u64,
        first_seq: u64,
        last_seq: u64,
    }
    #[derive(Serialize)]
    struct Packet<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        data: Data<'a>,
    }
    frame_of(&Packet {
        kind: "error",
        data: Data {
            user: OutUser {
                user_name: &echo.user_name,
                user_avatar: &echo.user_avatar,
            },
            room_name: &echo.room_name,
            msg: "history incomplete",
            since,
            first_seq,
            last_seq,
        },
    })
}

/// The JSON text inside a frame this module built (header skipped).
pub fn frame_payload(frame: &[u8]) -> &[u8] {
    let header_len = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header_len..).unwrap_or_default()
}

/// A live `msg` frame as history: the same packet with `"history": true`
/// added to `data`, for the one connection catching up.
pub fn history_frame(live: &[u8]) -> Rc<[u8]> {
    let payload = frame_payload(live);
    // Every msg packet this module writes ends with the `}}` closing `data`
    // and the packet; anything else is passed through unchanged.
    let Some(body) = payload.strip_suffix(b"}}") else {
        return Rc::from(live);
    };
    SCRATCH.with_borrow_mut(|buffer| {
        buffer.clear();
        buffer.resize(HEADER_ROOM, 0);
        buffer.extend_from_slice(body);
        buffer.extend_from_slice(b",\"history\":true}}");
        seal_frame(buffer)
    })
}

/// A text frame carrying `payload`, a packet this module wrote earlier
/// (cluster mode keeps packets, not frames, in Redis).
pub fn frame_from_payload(payload: &[u8]) -> Rc<[u8]> {
    SCRATCH.with_borrow_mut(|buffer| {
        buffer.clear();
        buffer.resize(HEADER_ROOM, 0);
        buffer.extend_from_slice(payload);
        seal_frame(buffer)
    })
}

/// A `msg` packet's JSON cut where its seq goes, for a store that assigns
/// the seq itself: `before + seq + after` is `msg_frame`'s payload.
pub fn msg_packet_around_seq(
    user_name: &str,
    user_avatar: &str,
    room_name: &str,
    msg: &str,
    ts: u64,
) -> (Vec<u8>, Vec<u8>) {
    let frame = msg_frame(user_name, user_avatar, room_name, msg, ts, 0);
    let payload = frame_payload(&frame);
    // `seq` is the last field of `data`: the payload ends `"seq":0}}`.
    let cut = payload.len().saturating_sub(3);
    (payload[..cut].to_vec(), payload[cut + 1..].to_vec())
}

fn frame_of(packet: &impl Serialize) -> Rc<[u8]> {
    // Serialised into a buffer kept between calls, then copied once into
    // the shared frame: one allocation per broadcast, however the JSON
    // escaping changes the length.
    SCRATCH.with_borrow_mut(|buffer| {
        buffer.clear();
        buffer.resize(HEADER_ROOM, 0);
        // Serialising plain strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buffer, packet);
        seal_frame(buffer)
    })
}

/// Writes the frame header in front of the payload that follows
/// `HEADER_ROOM` reserved bytes, and copies the frame out.
fn seal_frame(buffer: &mut Vec<u8>) -> Rc<[u8]> {
    let payload_len = buffer.len() - HEADER_ROOM;
    let header = ws::frame_header(ws::OpCode::Text, payload_len);
    let header = header.as_bytes();
    let start = HEADER_ROOM - header.len();
    buffer[start..HEADER_ROOM].copy_from_slice(header);
    let frame = Rc::from(&buffer[start..]);
    if buffer.capacity() > MAX_KEPT_SCRATCH {
        *buffer = Vec::new();
    }
    frame
}

/// A message of the largest size stays within this; a bigger scratch buffer
/// (from an unusually escaped message) is not kept.
const MAX_KEPT_SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An `error` packet for one connection.
pub fn error_frame(error: PacketError, echo: &Echo) -> Rc<[u8]> {
    server_frame(
        "error",
        &echo.user_name,
        &echo.user_avatar,
        &echo.room_name,
        error.as_str(),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> PacketError {
        parse(text).unwrap_err().0
    }

    #[test]
    fn the_original_examples_parse() {
        let join = r#"{"type":"join","data":{"user":{"user_name":"test","user_avatar":""},"room_name":"TEST","msg":""}}"#;
        let packet = parse(join).unwrap();
        assert_eq!(packet.kind, PacketKind::Join);
        assert_eq!(packet.user_name, "test");
        assert_eq!(packet.room_name, "TEST");
        let msg = r#"{"type":"msg","data":{"user":{"user_name":"test","user_avatar":""},"room_name":"TEST","msg":"hello"}}"#;
        assert_eq!(parse(msg).unwrap().msg, "hello");
    }

    #[test]
    fn structural_errors_follow_the_table_order() {
        assert_eq!(error_of("not json"), PacketError::InvalidMessage);
        assert_eq!(error_of("[1,2]"), PacketError::InvalidMessage);
        assert_eq!(error_of(r#"{"data":{}}"#), PacketError::InvalidMessage);
        assert_eq!(error_of(r#"{"type":"join"}"#), PacketError::InvalidMessage);
        assert_eq!(
            error_of(r#"{"type":1,"data":{}}"#),
            PacketError::InvalidMessage
        );
        assert_eq!(
            error_of(r#"{"type":"join","data":"x"}"#),
            PacketError::InvalidMessage
        );
        assert_eq!(
            error_of(r#"{"type":"shout","data":{}}"#),
            PacketError::InvalidType
        );
        assert_eq!(
            error_of(r#"{"type":"join","data":{"room_name":"r"}}"#),
            PacketError::InvalidData
        );
        assert_eq!(
            error_of(r#"{"type":"join","data":{"user":{},"room_name":"r"}}"#),
            PacketError::InvalidData
        );
        assert_eq!(
            error_of(r#"{"type":"join","data":{"user":{"user_name":"a"}}}"#),
            PacketError::InvalidData
        );
        assert_eq!(
            error_of(r#"{"type":"join","data":{"user":{"user_name":"a"},"room_name":5}}"#),
            PacketError::InvalidData
        );
        assert_eq!(
            error_of(r#"{"type":"msg","data":{"user":{"user_name":"a"},"room_name":"r"}}"#),
            PacketError::InvalidData
        );
        assert_eq!(
            error_of(r#"{"type":"join","data":{"user":{"user_name":""},"room_name":"r"}}"#),
            PacketError::IllegalData
        );
        assert_eq!(
            error_of(r#"{"type":"leave","data":{"user":{"user_name":"a"},"room_name":""}}"#),
            PacketError::IllegalData
        );
        assert_eq!(
            error_of(
                r#"{"type":"msg","data":{"user":{"user_name":"a"},"room_name":"r","msg":""}}"#
            ),
            PacketError::NullMessage
        );
    }

    #[test]
    fn avatar_and_msg_may_be_absent_for_join() {
        let packet = parse(
            r#"{"type":"join","data":{"user":{"user_name":"a"},"room_name":"r","token":"t"}}"#,
        )
        .unwrap();
        assert_eq!(packet.user_avatar, "");
        assert_eq!(packet.msg, "");
        assert_eq!(packet.token.as_deref(), Some("t"));
    }

    #[test]
    fn errors_echo_what_was_sent() {
        let (error, echo) = parse(r#"{"type":"msg","data":{"user":{"user_name":"ann","user_avatar":"a.png"},"room_name":"r","msg":""}}"#).unwrap_err();
        assert_eq!(error, PacketError::NullMessage);
        assert_eq!(echo.user_name, "ann");
        assert_eq!(echo.user_avatar, "a.png");
        assert_eq!(echo.room_name, "r");
        let frame = error_frame(error, &echo);
        let json: Value = serde_json::from_slice(&frame[2..]).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["data"]["msg"], "null message");
        assert_eq!(json["data"]["user"]["user_name"], "ann");
        assert_eq!(json["data"]["room_name"], "r");
    }

    #[test]
    fn server_frames_are_single_unmasked_text_frames_of_full_shape() {
        for msg in ["hi".to_string(), "x".repeat(300), "y".repeat(70_000)] {
            let frame = server_frame("msg", "ann", "", "lobby", &msg, Some(7));
            let mut decoder = ws::Decoder::new(ws::Limits {
                max_message_bytes: 1 << 20,
                max_fragments: 1,
            });
            // The decoder insists on client masking; check the header by hand.
            assert_eq!(frame[0], 0x81, "FIN + text");
            assert_eq!(frame[1] & 0x80, 0, "server frames are not masked");
            assert!(
                decoder.decode(&frame).is_err(),
                "an unmasked frame is not a client frame"
            );
            let header_len = match frame[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let json: Value = serde_json::from_slice(&frame[header_len..]).unwrap();
            assert_eq!(json["data"]["msg"], msg.as_str());
            assert_eq!(json["data"]["ts"], 7);
            assert_eq!(json["data"]["user"]["user_avatar"], "");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_checks() {
        let cases = [
            r#"{"type":"msg","data":{"user":{"user_name":"a","user_avatar":"x"},"room_name":"r","msg":"hi"}}"#,
            r#"{"type":"join","data":{"user":{"user_name":"a"},"room_name":"r"}}"#,
            r#"{"type":"join","data":{"user":{"user_name":"a","user_avatar":null},"room_name":"r","msg":null}}"#,
            r#"{"type":"leave","data":{"user":{"user_name":"a"},"room_name":"r","token":"t","extra":{"k":1}}}"#,
            r#"{"type":"msg","data":{"user":{"user_name":"\u0061\n"},"room_name":"房间","msg":"[not an array]"}}"#,
            r#"{"type":"msg","data":{"user":{"user_name":"a"},"room_name":"r","msg":null}}"#,
            r#"{"type":"msg","data":{"user":{"user_name":"a"},"room_name":"r","msg":""}}"#,
            r#"{"type":"msg","data":{"user":{"user_name":""},"room_name":"r","msg":"x"}}"#,
            r#"{"type":"msg","type":"join","data":{"user":{"user_name":"a"},"room_name":"r"}}"#,
            r#"{"type":"msg","data":["user","r","m"]}"#,
            r#"["msg",{"user":{"user_name":"a"},"room_name":"r","msg":"m"}]"#,
            r#"{"type":"msg","data":{"user":["a",null],"room_name":"r","msg":"m"}}"#,
            r#"{"type":"join","data":{"user":{"user_name":"a","user_avatar":7},"room_name":"r"}}"#,
            r#"{"type":"join","data":{"user":{"user_name":"a"},"room_name":"r","msg":5}}"#,
            r#"{"type":"dance","data":{"user":{"user_name":"a"},"room_name":"r"}}"#,
            r#"{"type":"join","data":{"user":{"user_name":"a"},"room_name":"r","token":5}}"#,
            r#"{"type":"join","data":{"user":{"user_name":"a"},"room_name":"r"}} "#,
            r#"{"type":"join","data":{"user":{"user_name":"a"},"room_name":"r"}}x"#,
            r#"{"type":"join","data":{"user":{"user_name":"a","user_name":"b"},"room_name":"r"}}"#,
        ];
        let mut fast = 0;
        for text in cases {
            let checked = parse_checked(text);
            if let Some(packet) = parse_well_formed(text) {
                fast += 1;
                assert_eq!(Ok(packet), checked, "{text}");
            }
            assert_eq!(parse(text), checked, "{text}");
        }
        assert!(fast >= 5, "the common packets take the fast path");
    }
}

#[cfg(test)]
mod store_assigned_seq {
    use super::*;

    #[test]
    fn a_packet_cut_around_its_seq_rebuilds_the_live_frame() {
        for seq in [1u64, 9, 10, 123_456_789] {
            let (before, after) =
                msg_packet_around_seq("小明", "http://a/b.png", "房间 \"1\"", "hi\n", 1_700);
            let mut payload = before.clone();
            payload.extend_from_slice(seq.to_string().as_bytes());
            payload.extend_from_slice(&after);
            let live = msg_frame("小明", "http://a/b.png", "房间 \"1\"", "hi\n", 1_700, seq);
            assert_eq!(&*frame_from_payload(&payload), &*live, "seq {seq}");
        }
    }
}
