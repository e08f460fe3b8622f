//! Client packets (SPEC §4): every outcome is either a valid packet or one
//! of the SPEC's error strings, decided in the order of its table, which a
//! model written from the SPEC replays. Error packets and server packets
//! are well-formed text frames carrying exactly what they should.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use chatroom::chat::packet::{self, ClientPacket, Echo, PacketError, PacketKind};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// The structural errors the packet decoder may give (the rest of the table
/// needs the chat state).
const STRUCTURAL: [&str; 5] = [
    "invalid message",
    "invalid type",
    "invalid data",
    "illegal data",
    "null message",
];

#[derive(Arbitrary, Debug)]
enum Key {
    Type,
    Data,
    User,
    UserName,
    UserAvatar,
    RoomName,
    Msg,
    Token,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Text {
    Join,
    Leave,
    Msg,
    Empty,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Number(i64),
    Str(Text),
    Array(Vec<Json>),
    Object(Vec<(Key, Json)>),
}

fn key(key: &Key) -> String {
    match key {
        Key::Type => "type",
        Key::Data => "data",
        Key::User => "user",
        Key::UserName => "user_name",
        Key::UserAvatar => "user_avatar",
        Key::RoomName => "room_name",
        Key::Msg => "msg",
        Key::Token => "token",
        Key::Other(other) => other,
    }
    .to_owned()
}

fn value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::from(*n),
        Json::Str(text) => Value::String(
            match text {
                Text::Join => "join",
                Text::Leave => "leave",
                Text::Msg => "msg",
                Text::Empty => "",
                Text::Other(other) => other,
            }
            .to_owned(),
        ),
        Json::Array(items) => Value::Array(items.iter().map(value).collect()),
        Json::Object(members) => {
            let mut map = Map::new();
            for (k, v) in members {
                map.insert(key(k), value(v));
            }
            Value::Object(map)
        }
    }
}

fn text_of(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str)
}

/// SPEC §4's table, first five rows, read off a JSON value.
fn model(root: Option<&Value>) -> Result<ClientPacket, (PacketError, Echo)> {
    let Some(Value::Object(root)) = root else {
        return Err((PacketError::InvalidMessage, Echo::default()));
    };
    let data = root.get("data");
    let user = data.and_then(|d| d.get("user"));
    let echo = Echo {
        user_name: text_of(user.and_then(|u| u.get("user_name")))
            .unwrap_or("")
            .to_owned(),
        user_avatar: text_of(user.and_then(|u| u.get("user_avatar")))
            .unwrap_or("")
            .to_owned(),
        room_name: text_of(data.and_then(|d| d.get("room_name")))
            .unwrap_or("")
            .to_owned(),
    };
    let fail = |error| Err((error, echo.clone()));
    let kind = match (root.get("type"), data) {
        (Some(Value::String(kind)), Some(Value::Object(_))) => kind.as_str(),
        _ => return fail(PacketError::InvalidMessage),
    };
    let kind = match kind {
        "join" => PacketKind::Join,
        "leave" => PacketKind::Leave,
        "msg" => PacketKind::Msg,
        _ => return fail(PacketError::InvalidType),
    };
    let Some(data) = data else {
        return fail(PacketError::InvalidMessage);
    };
    let user_ok = user.is_some_and(Value::is_object);
    let name = text_of(user.and_then(|u| u.get("user_name")));
    let room = text_of(data.get("room_name"));
    // Optional fields may be absent or null, but not of another type.
    let optional_text_ok =
        |v: Option<&Value>| matches!(v, None | Some(Value::Null | Value::String(_)));
    let avatar_ok = optional_text_ok(user.and_then(|u| u.get("user_avatar")));
    let token_ok = optional_text_ok(data.get("token"));
    // SPEC §8: `since` is absent, null, or a non-negative integer.
    let since = match data.get("since") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(()),
        Some(_) => Err(()),
    };
    let msg = text_of(data.get("msg"));
    // A join or leave needs no msg; one of another type is ignored there.
    let msg_ok = kind != PacketKind::Msg || msg.is_some();
    let (Some(name), Some(room)) = (name, room) else {
        return fail(PacketError::InvalidData);
    };
    let Ok(since) = since else {
        return fail(PacketError::InvalidData);
    };
    if !user_ok || !avatar_ok || !token_ok || !msg_ok {
        return fail(PacketError::InvalidData);
    }
    if name.is_empty() || room.is_empty() {
        return fail(PacketError::IllegalData);
    }
    let msg = msg.unwrap_or("");
    if kind == PacketKind::Msg && msg.is_empty() {
        return fail(PacketError::NullMessage);
    }
    Ok(ClientPacket {
        kind,
        user_name: name.to_owned(),
        user_avatar: echo.user_avatar.clone(),
        room_name: room.to_owned(),
        msg: msg.to_owned(),
        token: text_of(data.get("token")).map(str::to_owned),
        since,
    })
}

/// The JSON inside a server text frame, after checking the frame.
fn frame_json(frame: &[u8]) -> Value {
    assert_eq!(frame[0], 0x81, "a final text frame");
    let (header_len, len) = match frame[1] {
        126 => (4, usize::from(u16::from_be_bytes([frame[2], frame[3]]))),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&frame[2..10]);
            (10, u64::from_be_bytes(bytes) as usize)
        }
        short => (2, usize::from(short)),
    };
    assert_eq!(frame.len(), header_len + len);
    serde_json::from_slice(&frame[header_len..]).expect("server packets are JSON")
}

fn check_packet_json(json: &Value, kind: &str, user: &str, avatar: &str, room: &str, msg: &str) {
    assert_eq!(json["type"], kind);
    assert_eq!(json["data"]["user"]["user_name"], user);
    assert_eq!(json["data"]["user"]["user_avatar"], avatar);
    assert_eq!(json["data"]["room_name"], room);
    assert_eq!(json["data"]["msg"], msg);
}

fn check(text: &str, root: Option<&Value>) {
    let parsed = packet::parse(text);
    assert_eq!(
        parsed,
        model(root),
        "the decoder and the SPEC's table differ"
    );
    match parsed {
        Ok(packet) => {
            // A packet that passed is what a broadcast repeats.
            let frame = packet::server_frame(
                "msg",
                &packet.user_name,
                &packet.user_avatar,
                &packet.room_name,
                &packet.msg,
                Some(1),
            );
            let json = frame_json(&frame);
            check_packet_json(
                &json,
                "msg",
                &packet.user_name,
                &packet.user_avatar,
                &packet.room_name,
                &packet.msg,
            );
            assert_eq!(json["data"]["ts"], 1);
        }
        Err((error, echo)) => {
            assert!(STRUCTURAL.contains(&error.as_str()), "{error:?}");
            let json = frame_json(&packet::error_frame(error, &echo));
            check_packet_json(
                &json,
                "error",
                &echo.user_name,
                &echo.user_avatar,
                &echo.room_name,
                error.as_str(),
            );
        }
    }
}

// Layout: a mode byte. Even: the rest is the text frame's payload (a
// hand-written seed is `\0` and a packet). Odd: a JSON value built with
// `arbitrary` from the protocol's keys and words.
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // Text frames are UTF-8 by the time they reach the packet decoder.
        if let Ok(text) = std::str::from_utf8(rest) {
            let root = serde_json::from_str::<Value>(text).ok();
            check(text, root.as_ref());
        }
        return;
    }
    if let Ok(json) = Json::arbitrary_take_rest(Unstructured::new(rest)) {
        let text = serde_json::to_string(&value(&json)).expect("a value serialises");
        // Read back rather than the value built: past serde_json's nesting
        // limit (128) a document is refused as unreadable, so "invalid
        // message" with nothing to echo, which is what the model then says.
        let root = serde_json::from_str::<Value>(&text).ok();
        check(&text, root.as_ref());
    }
});
