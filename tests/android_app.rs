//! Compatibility suite for the original Android client of this API, the
//! Kotlin app in the public repository `bupt-juniorTeam/You` (Retrofit 2.6 with
//! its Gson converter, Gson 2.8, OkHttp 3). These tests guard that app: they
//! make its calls the way it makes them and decode every answer into mirrors
//! of its Gson models, so a shape that would crash it or blank a screen fails
//! here instead of on a phone.
//!
//! What the app does, read from its sources (paths below are inside that
//! repository, under `app/src/main/java/com/you/android/`):
//! - every HTTP call is a `GET` with `@Query` parameters, percent-encoded by
//!   OkHttp (`logic/network/*Service.kt`); it never sends a token and the
//!   released version never calls `/chatroom/room`; a non-2xx answer reaches
//!   the app as a null body and the screen shows a failure
//!   (`logic/network/YouNetwork.kt`);
//! - register sends only `user_tel`, `user_name` and `user_password`; login
//!   keeps `data.user_name` and `data.user_avatar_url` (`"default"` when
//!   empty) as the identity of every later packet (`logic/Repository.kt`);
//! - the home screen lists `room_list[].name` and `population`, and its search
//!   keeps the names containing the typed text (`ui/homepage/HomePageActivity.kt`,
//!   `ui/roomlist/RoomListAdapter.kt`);
//! - the chat screen opens `ws://HOST:2333` (OkHttp requests path `/`), sends
//!   `join` with no admission, `msg` per message, and on leaving the screen
//!   `leave` then a close with code 1000; every text frame goes through
//!   `Gson.fromJson` into `logic/model/WebSocketMessage.kt`, and a frame that
//!   does not decode fails the socket (`logic/network/RoomWebSocketListener.kt`,
//!   `ui/chatroom/ChatroomActivity.kt`).

mod common;
mod ws_common;

use std::fmt;
use std::net::{SocketAddr, TcpStream};

use common::TestServer;
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};
use ws_common::READ_TIMEOUT;

// ---------------------------------------------------------------------------
// The app's Gson models
// ---------------------------------------------------------------------------

/// Serde mirrors of the app's Gson model classes (`logic/model/`), field for
/// field. Gson semantics, and how each is mirrored:
/// - a missing or `null` field is left null; where a screen dereferences it
///   (a crash, or a failed call and an error toast), the mirror is a plain
///   non-optional type so the test fails instead;
/// - a Kotlin `Int` is a primitive: `null` leaves it 0, text or a number a
///   32-bit int cannot hold fails the whole parse (see [`gson_int`]);
/// - unknown fields are ignored, so nothing here denies them.
///
/// `String` fields are a little stricter than Gson (which would also take a
/// number's text); the server has no reason to send one.
mod model {
    use super::*;

    /// `logic/model/RegisterResponse.kt`.
    #[derive(Debug, Deserialize)]
    pub struct RegisterResponse {
        pub res: String,
    }

    /// `logic/model/LogInResponse.kt`. `data` is declared non-null, but Gson
    /// leaves it null on a failed login and the app reads it only after
    /// `res == "login successfully"`, so it is optional here and
    /// [`LogInResponse::data`] insists on it where the app dereferences it.
    #[derive(Debug, Deserialize)]
    pub struct LogInResponse {
        pub res: String,
        #[serde(default)]
        pub data: Option<LogInData>,
    }

    impl LogInResponse {
        /// `logInResponse.data`, as `Repository.userLogIn` dereferences it.
        pub fn data(&self) -> &LogInData {
            self.data
                .as_ref()
                .unwrap_or_else(|| panic!("the app dereferences a null data: {self:?}"))
        }
    }

    /// `LogInResponse.Data`.
    #[derive(Debug, Deserialize)]
    pub struct LogInData {
        /// Kotlin `Int`, never read by the app (it keeps the number as typed).
        #[serde(deserialize_with = "gson_int", default)]
        pub user_tel: i32,
        /// Passed to `UserDao.saveUserName`: null throws.
        pub user_name: String,
        /// Kotlin `String`, never read by the app; SPEC §2.3 says the server
        /// never sends it, so it stays optional and the tests check absence.
        #[serde(default)]
        pub user_password: Option<String>,
        /// `avatar.isEmpty()` in `Repository.userLogIn`: null throws.
        pub user_avatar_url: String,
    }

    /// `logic/model/RoomListResponse.kt`: a missing `room_list` leaves the
    /// home screen with "no rooms".
    #[derive(Debug, Deserialize)]
    pub struct RoomListResponse {
        pub room_list: Vec<Room>,
    }

    /// `RoomListResponse.Room`. `name` is shown in the list and dereferenced
    /// by the search (`element.name.contains(...)`): null crashes.
    /// `population` is a Kotlin `Int`; Gson would show a missing one as "0",
    /// a wrong number, so the mirror insists on a present 32-bit integer.
    #[derive(Debug, Deserialize)]
    pub struct Room {
        pub name: String,
        pub population: i32,
    }

    /// `logic/model/CreateRoomResponse.kt`.
    #[derive(Debug, Deserialize)]
    pub struct CreateRoomResponse {
        pub res: String,
    }

    /// `logic/model/JoinOrLeaveRoomResponse.kt` of the versions before commit
    /// 2212554 ("joining and leaving no longer send HTTP messages"), which
    /// called `GET /chatroom/room` around the WebSocket join and leave.
    #[derive(Debug, Deserialize)]
    pub struct JoinOrLeaveRoomResponse {
        pub res: String,
    }

    /// `logic/model/WebSocketMessage.kt`, both ways: the app serialises it
    /// with `Gson().toJson` and parses every text frame into it.
    /// `ChatroomActivity` switches on `type` and reads `data.user.user_name`,
    /// `data.user.user_avatar` and `data.msg` (into the non-null parameters of
    /// `Msg`): any of them null crashes the screen.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WebSocketMessage {
        #[serde(rename = "type")]
        pub kind: String,
        pub data: Data,
    }

    /// `WebSocketMessage.Data`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Data {
        pub user: User,
        pub room_name: String,
        pub msg: String,
    }

    /// `WebSocketMessage.User`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct User {
        pub user_name: String,
        pub user_avatar: String,
    }
}

use model::*;

/// A Kotlin `Int` property as Gson 2.8 fills it through `JsonReader.nextInt`:
/// JSON `null` leaves the primitive at 0 (and so does a missing field, via
/// `default`); a number must be a whole value within 32 bits (`5.0` is 5,
/// `13800138000` fails); a string is read as an int, or else as a double that
/// must be whole and in range (exotic Java float syntax aside); anything else
/// fails the parse, which fails the whole call in the app.
fn gson_int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    struct GsonInt;

    fn whole(value: f64) -> Option<i32> {
        let in_range = value >= f64::from(i32::MIN) && value <= f64::from(i32::MAX);
        (value.fract() == 0.0 && in_range).then_some(value as i32)
    }

    impl<'de> Visitor<'de> for GsonInt {
        type Value = i32;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("what Gson reads into a Kotlin Int: a 32-bit whole number, or null")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<i32, E> {
            Ok(0)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<i32, E> {
            Ok(0)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("{v} does not fit a Kotlin Int")))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("{v} does not fit a Kotlin Int")))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i32, E> {
            whole(v).ok_or_else(|| E::custom(format!("{v} is not a Kotlin Int")))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<i32, E> {
            v.parse::<i32>()
                .ok()
                .or_else(|| v.trim().parse::<f64>().ok().and_then(whole))
                .ok_or_else(|| E::custom(format!("{v:?} is not a Kotlin Int")))
        }
    }

    deserializer.deserialize_any(GsonInt)
}

/// `Gson().toJson(...)` with Gson's defaults: compact, fields in declaration
/// order, non-ASCII text written as is, and HTML-safe escaping of
/// `< > & = '` (plus U+2028 and U+2029) as `\uXXXX`. Those characters only
/// ever occur inside strings, so escaping them in serde_json's output is
/// exact.
fn gson_to_json<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_string(value).expect("the model serialises");
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' | '>' | '&' | '=' | '\'' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// A query component as OkHttp's `HttpUrl.Builder.addQueryParameter` writes
/// it for Retrofit's `@Query`: UTF-8, percent-encoded (upper-case hex) for
/// controls, non-ASCII, `%`, `+` and `` !"#$&'(),/:;<=>?@[]\^`{|}~``.
fn okhttp_query_component(value: &str) -> String {
    const ENCODED: &[u8] = b" !\"#$&'(),/:;<=>?@[]\\^`{|}~%+";
    let mut out = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        if !(0x20..0x7f).contains(&byte) || ENCODED.contains(&byte) {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

/// An OkHttp 3 `User-Agent` (Retrofit 2.6.1 pulls in OkHttp 3; the server
/// reads nothing from it, it is here so requests look like the app's).
const OKHTTP_USER_AGENT: &str = "okhttp/3.14.2";

// ---------------------------------------------------------------------------
// The app's network layer
// ---------------------------------------------------------------------------

/// A decoded answer and the JSON it came from (for the SPEC checks the app
/// itself cannot see, such as `user_tel` being `null` rather than 0).
#[derive(Debug)]
struct Answer<T> {
    model: T,
    raw: Value,
}

/// What `UserDao` holds after a successful login (`Repository.userLogIn`,
/// `LoginActivity`) that the chat screen uses: the name and the avatar the
/// app puts in every packet.
#[derive(Debug, Clone)]
struct Session {
    name: String,
    avatar: String,
}

const PASSWORD: &str = "secret123";

/// The app on one phone: its Retrofit services (`logic/network/`) over an
/// independent HTTP client, pointed at the test server.
struct App {
    http: SocketAddr,
    ws: SocketAddr,
    agent: ureq::Agent,
}

impl App {
    fn on(server: &TestServer) -> App {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(READ_TIMEOUT))
            .build()
            .into();
        App {
            http: server.http_addr(),
            ws: server.ws_addr(),
            agent,
        }
    }

    /// One Retrofit call: `GET path?query` as OkHttp encodes it, the body
    /// through Gson into `T`. Panics where the app would see a failure.
    fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Answer<T> {
        let mut url = format!("http://{}{path}", self.http);
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&okhttp_query_component(name));
            url.push('=');
            url.push_str(&okhttp_query_component(value));
        }
        let mut response = self
            .agent
            .get(&url)
            .header("User-Agent", OKHTTP_USER_AGENT)
            .header("Accept-Encoding", "gzip")
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let encoded = response.headers().get("content-encoding").cloned();
        let body = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("GET {url}: body: {e}"));
        assert!(
            (200..300).contains(&status) && status != 204 && status != 205,
            "GET {url} answered {status} {body}: Retrofit hands the app a null body \
             and the screen shows a failure"
        );
        assert!(
            encoded.is_none(),
            "GET {url}: Content-Encoding {encoded:?}; this client does not decode it"
        );
        let raw: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"));
        let model = serde_json::from_value(raw.clone()).unwrap_or_else(|e| {
            panic!(
                "GET {url}: Gson cannot read {body} into the app's {} ({e})",
                std::any::type_name::<T>()
            )
        });
        Answer { model, raw }
    }

    /// `RegisterService.register`.
    fn register(&self, tel: &str, name: &str, password: &str) -> Answer<RegisterResponse> {
        self.get(
            "/auth/register",
            &[
                ("user_tel", tel),
                ("user_name", name),
                ("user_password", password),
            ],
        )
    }

    /// `LogInService.logIn`.
    fn log_in(&self, tel: &str, password: &str) -> Answer<LogInResponse> {
        self.get(
            "/auth/login",
            &[("user_tel", tel), ("user_password", password)],
        )
    }

    /// `RoomListService.searchRooms`.
    fn search_rooms(&self) -> Answer<RoomListResponse> {
        self.get("/chatroom/list", &[])
    }

    /// `CreateRoomService.createRoom`.
    fn create_room(&self, room_name: &str) -> String {
        self.get::<CreateRoomResponse>("/chatroom/create", &[("room_name", room_name)])
            .model
            .res
    }

    /// `JoinOrLeaveRoomService.join` / `.leave` of the versions before 2212554.
    fn join_or_leave(&self, room_name: &str, user_name: &str, status: i32) -> String {
        let status = status.to_string();
        self.get::<JoinOrLeaveRoomResponse>(
            "/chatroom/room",
            &[
                ("room_name", room_name),
                ("user_name", user_name),
                ("status", &status),
            ],
        )
        .model
        .res
    }

    /// The register screen then the login screen, both succeeding.
    fn sign_up_and_in(&self, tel: &str, name: &str) -> Session {
        let res = self.register(tel, name, PASSWORD).model.res;
        assert_eq!(res, "register successfully", "register {name} ({tel})");
        self.sign_in(tel, PASSWORD)
    }

    /// `Repository.userLogIn` on success: what it stores in `UserDao`.
    fn sign_in(&self, tel: &str, password: &str) -> Session {
        let answer = self.log_in(tel, password);
        assert_eq!(answer.model.res, "login successfully", "{:?}", answer.raw);
        let data = answer.model.data();
        let avatar = if data.user_avatar_url.is_empty() {
            "default".to_string()
        } else {
            data.user_avatar_url.clone()
        };
        Session {
            name: data.user_name.clone(),
            avatar,
        }
    }

    /// The rooms the home screen shows, in order.
    fn rooms(&self) -> Vec<Room> {
        self.search_rooms().model.room_list
    }

    /// The population a room's row shows.
    fn population(&self, room: &str) -> i32 {
        self.rooms()
            .into_iter()
            .find(|r| r.name == room)
            .unwrap_or_else(|| panic!("{room} is not in the app's room list"))
            .population
    }

    /// The home screen's search button: the listed names containing `text`.
    fn search(&self, text: &str) -> Vec<String> {
        self.rooms()
            .into_iter()
            .filter(|room| room.name.contains(text))
            .map(|room| room.name)
            .collect()
    }

    /// `ChatroomActivity.onCreate` → `Repository.createRoomSocket`.
    fn enter(&self, me: &Session, room: &str) -> AppSocket {
        AppSocket::open(self.ws, me, room)
    }
}

/// The chat screen's socket: `YouSocket` and its `RoomWebSocketListener`.
struct AppSocket {
    me: Session,
    room: String,
    ws: WebSocket<TcpStream>,
}

/// What the server sent after the app's leave and close.
#[derive(Debug)]
struct Closed {
    packets: Vec<WebSocketMessage>,
    close_code: Option<u16>,
}

impl AppSocket {
    /// `WebSocketCreator.create` on `ws://HOST:PORT` (OkHttp asks for `/`),
    /// then the `join` packet with an empty `msg`.
    fn open(addr: SocketAddr, me: &Session, room: &str) -> AppSocket {
        let stream = TcpStream::connect(addr).expect("connect to the WebSocket port");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        let mut request = format!("ws://{addr}/")
            .into_client_request()
            .expect("a WebSocket request");
        let headers = request.headers_mut();
        headers.insert("User-Agent", HeaderValue::from_static(OKHTTP_USER_AGENT));
        headers.insert("Accept-Encoding", HeaderValue::from_static("gzip"));
        let (ws, response) =
            tungstenite::client(request, stream).unwrap_or_else(|e| panic!("handshake: {e}"));
        assert_eq!(response.status().as_u16(), 101);
        let mut socket = AppSocket {
            me: me.clone(),
            room: room.to_string(),
            ws,
        };
        socket.send("join", "");
        socket
    }

    /// A packet as `Repository` builds it: the stored name and avatar.
    fn send(&mut self, kind: &str, msg: &str) {
        let packet = self.packet(kind, msg);
        self.ws.send(packet).expect("send a packet");
    }

    /// The Gson text of a packet from this screen.
    fn packet(&self, kind: &str, msg: &str) -> Message {
        let packet = WebSocketMessage {
            kind: kind.to_string(),
            data: Data {
                user: User {
                    user_name: self.me.name.clone(),
                    user_avatar: self.me.avatar.clone(),
                },
                room_name: self.room.clone(),
                msg: msg.to_string(),
            },
        };
        Message::text(gson_to_json(&packet))
    }

    /// `Repository.sendMessage`.
    fn send_message(&mut self, text: &str) {
        self.send("msg", text);
    }

    /// A text frame through `Gson.fromJson` into the app's model.
    fn decode(text: &str) -> WebSocketMessage {
        serde_json::from_str(text).unwrap_or_else(|e| {
            panic!("the app cannot read this packet ({e}), its socket fails: {text}")
        })
    }

    /// The next packet the listener posts to the screen.
    fn next_packet(&mut self, waiting_for: &str) -> WebSocketMessage {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return AppSocket::decode(text.as_str()),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(other) => panic!("waiting for {waiting_for}: unexpected frame {other:?}"),
                Err(e) => panic!("waiting for {waiting_for}: {e}"),
            }
        }
    }

    /// Reads packets until one of `kind` with `data.msg == msg` arrives, from
    /// `user`; every packet on the way must decode too.
    fn wait_for(&mut self, kind: &str, user: &str, msg: &str) -> WebSocketMessage {
        let what = format!("{kind} {msg:?} from {user} on {}'s screen", self.me.name);
        loop {
            let packet = self.next_packet(&what);
            if packet.kind == kind && packet.data.user.user_name == user && packet.data.msg == msg {
                return packet;
            }
        }
    }

    /// `Repository.closeRoomSocket`: `leave`, then close 1000 with the app's
    /// reason; reads what the server sends until it closes the connection.
    /// The app sends the two back to back; here they leave in one write, the
    /// way they often arrive, so the server meets both in one read.
    fn close_chat(mut self) -> Closed {
        let leave = self.packet("leave", "");
        self.ws.write(leave).expect("queue the leave");
        self.ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "退出聊天室".into(),
            }))
            .expect("send close");
        let mut closed = Closed {
            packets: Vec::new(),
            close_code: None,
        };
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => closed.packets.push(AppSocket::decode(text.as_str())),
                Ok(Message::Close(frame)) => closed.close_code = frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return closed,
                Err(e) => panic!("closing {}'s socket: {e} after {closed:?}", self.me.name),
            }
        }
    }
}

/// Asserts a `user` packet about `user` in `room` with the avatar the app
/// will draw.
fn assert_user_packet(p: &WebSocketMessage, msg: &str, user: &Session, room: &str) {
    assert_eq!(p.kind, "user", "{p:?}");
    assert_eq!(p.data.msg, msg, "{p:?}");
    assert_eq!(p.data.user.user_name, user.name, "{p:?}");
    assert_eq!(p.data.user.user_avatar, user.avatar, "{p:?}");
    assert_eq!(p.data.room_name, room, "{p:?}");
}

// ---------------------------------------------------------------------------
// The mirrors themselves: as strict as the app, no stricter where it matters
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct IntOnly {
    #[serde(deserialize_with = "gson_int", default)]
    value: i32,
}

fn gson_reads(json: &str) -> Result<i32, String> {
    serde_json::from_str::<IntOnly>(json)
        .map(|v| v.value)
        .map_err(|e| e.to_string())
}

#[test]
fn mirror_kotlin_int_reads_what_gson_reads() {
    assert_eq!(gson_reads(r#"{"value": null}"#), Ok(0));
    assert_eq!(gson_reads(r#"{}"#), Ok(0));
    assert_eq!(gson_reads(r#"{"value": 12345}"#), Ok(12345));
    assert_eq!(gson_reads(r#"{"value": 2147483647}"#), Ok(i32::MAX));
    assert_eq!(gson_reads(r#"{"value": -2147483648}"#), Ok(i32::MIN));
    assert_eq!(gson_reads(r#"{"value": 5.0}"#), Ok(5));
    assert_eq!(gson_reads(r#"{"value": "12"}"#), Ok(12));
    assert_eq!(gson_reads(r#"{"value": "1e3"}"#), Ok(1000));
    for refused in [
        r#"{"value": 13800138000}"#,
        r#"{"value": 2147483648}"#,
        r#"{"value": 5.5}"#,
        r#"{"value": "13800138000"}"#,
        r#"{"value": "+8613800138000"}"#,
        r#"{"value": "abc"}"#,
        r#"{"value": true}"#,
        r#"{"value": [1]}"#,
    ] {
        assert!(gson_reads(refused).is_err(), "Gson refuses {refused}");
    }
}

#[test]
fn mirror_models_refuse_what_would_crash_or_blank_the_app() {
    let login = |json: &str| serde_json::from_str::<LogInResponse>(json);
    let ok = login(
        r#"{"res":"login successfully","data":{"user_tel":null,"user_name":"a",
            "user_avatar_url":"","token":"t"}}"#,
    )
    .expect("SPEC's login shape");
    assert_eq!(ok.data().user_tel, 0);
    assert!(login(r#"{"res":"password wrong","data":null}"#).is_ok());
    for bad in [
        // The phone number as a number Gson cannot fit into an Int.
        r#"{"res":"login successfully","data":{"user_tel":13800138000,"user_name":"a","user_avatar_url":""}}"#,
        // The phone number as text.
        r#"{"res":"login successfully","data":{"user_tel":"13800138000","user_name":"a","user_avatar_url":""}}"#,
        r#"{"res":"login successfully","data":{"user_tel":1,"user_avatar_url":""}}"#,
        r#"{"res":"login successfully","data":{"user_tel":1,"user_name":"a","user_avatar_url":null}}"#,
    ] {
        assert!(login(bad).is_err(), "the app fails on {bad}");
    }

    let list = |json: &str| serde_json::from_str::<RoomListResponse>(json);
    assert!(
        list(r#"{"rooms":[],"room_list":[{"name":"a","room_name":"a","population":3}]}"#).is_ok()
    );
    for bad in [
        // The original document's example: `rooms` only.
        r#"{"rooms":[{"name":"a","population":0}]}"#,
        // `room_list` entries without `name`.
        r#"{"room_list":[{"room_name":"a","population":0}]}"#,
        r#"{"room_list":[{"name":"a","population":"x"}]}"#,
        r#"{"room_list":[{"name":"a"}]}"#,
    ] {
        assert!(list(bad).is_err(), "the app's list fails on {bad}");
    }

    let packet = |json: &str| serde_json::from_str::<WebSocketMessage>(json);
    assert!(packet(
        r#"{"type":"msg","data":{"user":{"user_name":"a","user_avatar":""},
            "room_name":"r","msg":"m","ts":1,"seq":2,"history":true}}"#
    )
    .is_ok());
    for bad in [
        r#"{"type":"user","data":{"user":{"user_name":"a"},"room_name":"r","msg":"join"}}"#,
        r#"{"type":"error","data":{"user":null,"room_name":"","msg":"invalid room"}}"#,
        r#"{"type":"msg","data":{"user":{"user_name":"a","user_avatar":""},"room_name":"r"}}"#,
        r#"{"data":{"user":{"user_name":"a","user_avatar":""},"room_name":"r","msg":"m"}}"#,
    ] {
        assert!(packet(bad).is_err(), "the chat screen fails on {bad}");
    }
}

#[test]
fn mirror_encodings_are_okhttps_and_gsons() {
    assert_eq!(okhttp_query_component("138 0013-8000"), "138%200013-8000");
    assert_eq!(okhttp_query_component("+86"), "%2B86");
    assert_eq!(okhttp_query_component("a&b=c%"), "a%26b%3Dc%25");
    assert_eq!(okhttp_query_component("学习"), "%E5%AD%A6%E4%B9%A0");
    assert_eq!(okhttp_query_component("safe-._*~x"), "safe-._*%7Ex");

    let packet = WebSocketMessage {
        kind: "msg".into(),
        data: Data {
            user: User {
                user_name: "小明".into(),
                user_avatar: "default".into(),
            },
            room_name: "r".into(),
            msg: "<b>&'=".into(),
        },
    };
    assert_eq!(
        gson_to_json(&packet),
        r#"{"type":"msg","data":{"user":{"user_name":"小明","user_avatar":"default"},"room_name":"r","msg":"\u003cb\u003e\u0026\u0027\u003d"}}"#
    );
}

// ---------------------------------------------------------------------------
// Register and login
// ---------------------------------------------------------------------------

/// The usual user: an 11-digit mobile number, which no 32-bit `Int` holds.
/// The login must still decode (`user_tel` null, which Gson leaves at 0), and
/// the app keeps the name and the avatar it will send.
#[test]
fn register_and_login_with_an_11_digit_mobile_number() {
    let server = TestServer::start();
    let app = App::on(&server);

    let answer = app.register("13800138000", "小明", PASSWORD);
    assert_eq!(
        answer.model.res, "register successfully",
        "{:?}",
        answer.raw
    );
    // The register screen shows "number already registered" for anything else.
    let again = app.register("13800138000", "小明二号", PASSWORD);
    assert_eq!(again.model.res, "user exist", "{:?}", again.raw);

    let answer = app.log_in("13800138000", PASSWORD);
    assert_eq!(answer.model.res, "login successfully", "{:?}", answer.raw);
    let data = answer.model.data();
    assert_eq!(data.user_tel, 0, "Gson leaves a null Int at 0");
    assert_eq!(
        answer.raw["data"]["user_tel"],
        Value::Null,
        "{:?}",
        answer.raw
    );
    assert_eq!(data.user_name, "小明");
    assert_eq!(data.user_avatar_url, "");
    assert_eq!(data.user_password, None, "the password is never sent back");
    assert!(
        answer.raw["data"].get("user_password").is_none(),
        "{:?}",
        answer.raw
    );

    let me = app.sign_in("13800138000", PASSWORD);
    assert_eq!(me.name, "小明");
    assert_eq!(
        me.avatar, "default",
        "an empty avatar becomes the app's default"
    );
}

/// A number that fits an `Int` comes back as that number, one past it as null.
#[test]
fn short_numbers_that_fit_an_int_come_back_as_numbers() {
    let server = TestServer::start();
    let app = App::on(&server);
    for (tel, name, expected) in [
        ("12345", "short", Some(12345)),
        ("2147483647", "largest", Some(i32::MAX)),
        ("2147483648", "one past", None),
    ] {
        app.sign_up_and_in(tel, name);
        let answer = app.log_in(tel, PASSWORD);
        assert_eq!(answer.model.data().user_tel, expected.unwrap_or(0), "{tel}");
        let raw = &answer.raw["data"]["user_tel"];
        match expected {
            Some(n) => assert_eq!(raw.as_i64(), Some(i64::from(n)), "{tel}: {raw}"),
            None => assert!(raw.is_null(), "{tel}: {raw}"),
        }
    }
}

/// The phone keyboard lets people type `138 0013-8000`; the app sends the
/// text as typed. It is the same number at register and at login.
#[test]
fn typed_spaces_and_dashes_are_the_same_number() {
    let server = TestServer::start();
    let app = App::on(&server);

    let me = app.sign_up_and_in("138 0013-8000", "spaced");
    assert_eq!(me.name, "spaced");
    app.sign_in("13800138000", PASSWORD);
    app.sign_in("138-0013-8000", PASSWORD);
    let taken = app.register("13800138000", "another", PASSWORD).model.res;
    assert_eq!(taken, "user exist");

    // A leading `+` travels as %2B and is not a space.
    app.sign_up_and_in("+86 139-0000-0000", "international");
    app.sign_in("+8613900000000", PASSWORD);

    // Short and typed with a space: still a number the app can hold.
    app.sign_up_and_in("12 345", "spaced short");
    let answer = app.log_in("12345", PASSWORD);
    assert_eq!(answer.model.data().user_tel, 12345, "{:?}", answer.raw);
}

/// A wrong password of any length, or an unknown number, is an answer the
/// login screen shows, not an HTTP error (which the app cannot read).
#[test]
fn failed_logins_are_answers_the_app_can_read() {
    let server = TestServer::start();
    let app = App::on(&server);
    app.sign_up_and_in("13800138000", "someone");

    let long = "p".repeat(200);
    for password in ["123", "wrong-password", long.as_str()] {
        let answer = app.log_in("13800138000", password);
        assert_eq!(
            answer.model.res, "password wrong",
            "{password:?}: {:?}",
            answer.raw
        );
        assert!(answer.model.data.is_none(), "{:?}", answer.raw);
    }
    let answer = app.log_in("13900139000", "123");
    assert_eq!(answer.model.res, "user not exist", "{:?}", answer.raw);
    assert!(answer.model.data.is_none(), "{:?}", answer.raw);
}

// ---------------------------------------------------------------------------
// The room list and its search
// ---------------------------------------------------------------------------

/// The home screen's list: `room_list[].name` and `population`, in creation
/// order, names exactly as created (Chinese, spaces, `+` and `&` included).
#[test]
fn room_list_shows_names_and_populations() {
    let server = TestServer::start();
    let app = App::on(&server);
    assert!(app.rooms().is_empty());

    let names = ["学习小组", "C++ 学习 & 交流", "Music"];
    for name in names {
        assert_eq!(
            app.create_room(name),
            "chatroom create successfully",
            "{name}"
        );
    }
    assert_eq!(app.create_room("学习小组"), "chatroom already exist");

    let rooms = app.rooms();
    let shown: Vec<(&str, i32)> = rooms
        .iter()
        .map(|r| (r.name.as_str(), r.population))
        .collect();
    assert_eq!(
        shown,
        vec![("学习小组", 0), ("C++ 学习 & 交流", 0), ("Music", 0)]
    );

    let me = app.sign_up_and_in("13800138000", "小红");
    let mut socket = app.enter(&me, "C++ 学习 & 交流");
    socket.wait_for("user", "小红", "create");
    assert_eq!(app.population("C++ 学习 & 交流"), 1);
    assert_eq!(app.population("学习小组"), 0);
}

/// The search button keeps the listed names containing the typed text, and
/// tapping a result enters that room by its name.
#[test]
fn search_finds_rooms_by_name_and_enters_one() {
    let server = TestServer::start();
    let app = App::on(&server);
    for name in ["学习小组", "Music", "英语学习", "学"] {
        assert_eq!(app.create_room(name), "chatroom create successfully");
    }
    assert_eq!(app.search("学习"), vec!["学习小组", "英语学习"]);
    assert_eq!(app.search(""), vec!["学习小组", "Music", "英语学习", "学"]);
    assert!(app.search("nothing").is_empty());

    let me = app.sign_up_and_in("13800138000", "searcher");
    let found = app.search("英语").pop().expect("a search result");
    let mut socket = app.enter(&me, &found);
    let p = socket.wait_for("user", "searcher", "create");
    assert_user_packet(&p, "create", &me, "英语学习");
}

// ---------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------

/// Create, then the chat screen joins over WebSocket with no admission:
/// `create`. A second user sees the room in the list, enters it by its listed
/// name: both screens get `join`, and the newcomer the message said before.
#[test]
fn create_then_join_and_a_second_user_joins_from_the_list() {
    let server = TestServer::start();
    let app = App::on(&server);
    let alice = app.sign_up_and_in("13800138000", "alice");
    let bob = app.sign_up_and_in("13900139000", "bob");

    assert_eq!(app.create_room("lobby"), "chatroom create successfully");
    let mut a = app.enter(&alice, "lobby");
    let created = a.next_packet("alice's create");
    assert_user_packet(&created, "create", &alice, "lobby");
    assert_eq!(app.population("lobby"), 1);
    a.send_message("有人吗");
    a.wait_for("msg", "alice", "有人吗");

    let listed = app
        .rooms()
        .into_iter()
        .find(|r| r.name == "lobby")
        .expect("lobby is listed");
    assert_eq!(listed.population, 1);
    let mut b = app.enter(&bob, &listed.name);
    let joined = b.next_packet("bob's join");
    assert_user_packet(&joined, "join", &bob, "lobby");
    // The room's recent messages follow (SPEC §8); the app shows them as
    // received messages, so they must read as its packets too.
    let earlier = b.next_packet("the room's history");
    assert_eq!(earlier.kind, "msg", "{earlier:?}");
    assert_eq!(earlier.data.msg, "有人吗");
    assert_eq!(earlier.data.user.user_name, "alice");
    assert_eq!(earlier.data.user.user_avatar, "default");
    let seen = a.wait_for("user", "bob", "join");
    assert_user_packet(&seen, "join", &bob, "lobby");
    assert_eq!(app.population("lobby"), 2);
}

/// Chinese in names, room names and messages, both ways, including the
/// characters Gson escapes (`\u003c` …) and an emoji. The sender's screen
/// gets its own message back under its own name (and skips it by that name).
#[test]
fn chinese_text_both_ways() {
    let server = TestServer::start();
    let app = App::on(&server);
    let ming = app.sign_up_and_in("13800138000", "小明");
    let hong = app.sign_up_and_in("13900139000", "李小红");
    assert_eq!(
        app.create_room("北邮聊天室"),
        "chatroom create successfully"
    );

    let mut m = app.enter(&ming, "北邮聊天室");
    m.wait_for("user", "小明", "create");
    let mut h = app.enter(&hong, "北邮聊天室");
    h.wait_for("user", "李小红", "join");
    m.wait_for("user", "李小红", "join");

    let hello = "你好，世界！<b>今天</b> a=b & 'c' 😀";
    m.send_message(hello);
    let got = h.wait_for("msg", "小明", hello);
    assert_eq!(got.data.room_name, "北邮聊天室");
    assert_eq!(got.data.user.user_avatar, "default");
    let echo = m.wait_for("msg", "小明", hello);
    assert_eq!(
        echo.data.user.user_name, ming.name,
        "the app skips its own echo by name"
    );

    let reply = "收到，谢谢！";
    h.send_message(reply);
    let got = m.wait_for("msg", "李小红", reply);
    assert_eq!(got.data.room_name, "北邮聊天室");
}

/// The avatar: the app registers none, so login gives `""`, the app sends
/// `"default"` and draws its default picture from the packets. A user
/// registered with an address elsewhere (the web page) sees it in login data,
/// and every packet about them carries it.
#[test]
fn avatars_from_login_data_reach_the_packets() {
    let server = TestServer::start();
    let app = App::on(&server);
    let url = "https://example.com/avatars/cat.png";
    // Registered by another client: the app's register has no avatar field.
    let tel = server.register("有头像", url);
    let tel = tel.as_str();
    let answer = app.log_in(tel, PASSWORD);
    assert_eq!(answer.model.data().user_avatar_url, url, "{:?}", answer.raw);
    let pictured = app.sign_in(tel, PASSWORD);
    assert_eq!(pictured.avatar, url);
    let plain = app.sign_up_and_in("13900139000", "无头像");
    assert_eq!(plain.avatar, "default");

    assert_eq!(app.create_room("头像"), "chatroom create successfully");
    let mut p = app.enter(&pictured, "头像");
    assert_user_packet(&p.next_packet("create"), "create", &pictured, "头像");
    let mut d = app.enter(&plain, "头像");
    assert_user_packet(&d.next_packet("join"), "join", &plain, "头像");
    assert_user_packet(
        &p.wait_for("user", "无头像", "join"),
        "join",
        &plain,
        "头像",
    );

    p.send_message("看我的头像");
    let got = d.wait_for("msg", "有头像", "看我的头像");
    assert_eq!(got.data.user.user_avatar, url);
    d.send_message("我用默认的");
    let got = p.wait_for("msg", "无头像", "我用默认的");
    assert_eq!(got.data.user.user_avatar, "default");
}

/// Leaving the chat screen (`leave`, then close 1000) gives the seat back at
/// once: the list shows it right after the close completes, and in a room
/// of one seat the next user gets in straight away.
#[test]
fn leave_then_close_frees_the_seat_at_once() {
    let server = TestServer::start();
    let app = App::on(&server);
    let alice = app.sign_up_and_in("13800138000", "alice");
    let bob = app.sign_up_and_in("13900139000", "bob");

    assert_eq!(app.create_room("lobby"), "chatroom create successfully");
    let mut a = app.enter(&alice, "lobby");
    a.wait_for("user", "alice", "create");
    let mut b = app.enter(&bob, "lobby");
    b.wait_for("user", "bob", "join");
    assert_eq!(app.population("lobby"), 2);

    let closed = a.close_chat();
    assert_eq!(
        closed.close_code,
        Some(1000),
        "the close is echoed: {closed:?}"
    );
    // Both frames were read before the close echo: no waiting, no TTL.
    assert_eq!(app.population("lobby"), 1, "alice's seat is free at once");
    assert_user_packet(
        &b.wait_for("user", "alice", "leave"),
        "leave",
        &alice,
        "lobby",
    );

    let closed = b.close_chat();
    assert_eq!(closed.close_code, Some(1000), "{closed:?}");
    assert_eq!(app.population("lobby"), 0, "bob's seat is free at once");

    // One seat (made by another client: the app cannot set a capacity).
    server.create_room_with_capacity("单人间", 1);
    let mut a = app.enter(&alice, "单人间");
    a.wait_for("user", "alice", "create");
    assert_eq!(app.population("单人间"), 1);
    let closed = a.close_chat();
    assert_eq!(closed.close_code, Some(1000), "{closed:?}");
    assert_eq!(app.population("单人间"), 0);
    let mut b = app.enter(&bob, "单人间");
    let p = b.next_packet("bob takes the freed seat");
    assert_user_packet(&p, "create", &bob, "单人间");
    assert_eq!(app.population("单人间"), 1);
}

/// Leaving the screen sends `leave` and the close together: what the server
/// owes the leaving screen for its `leave` (its own `leave` packet, SPEC §4's
/// "the leaver included"; or the `not in room` error of a screen a full room
/// refused) comes before the close echo, not dropped because the close was
/// in the same read.
#[test]
fn leave_then_close_the_leaving_screen_gets_its_answer_before_the_close() {
    let server = TestServer::start();
    let app = App::on(&server);
    let alice = app.sign_up_and_in("13800138000", "alice");
    let bob = app.sign_up_and_in("13900139000", "bob");
    server.create_room_with_capacity("单人间", 1);

    let mut a = app.enter(&alice, "单人间");
    a.wait_for("user", "alice", "create");
    let mut b = app.enter(&bob, "单人间");
    assert_eq!(b.next_packet("full room").data.msg, "full room");

    let closed = b.close_chat();
    assert_eq!(closed.close_code, Some(1000), "{closed:?}");
    let refused: Vec<&str> = closed.packets.iter().map(|p| p.data.msg.as_str()).collect();
    assert_eq!(
        refused,
        ["not in room"],
        "the refused screen's leave is answered before the close: {closed:?}"
    );

    let closed = a.close_chat();
    assert_eq!(closed.close_code, Some(1000), "{closed:?}");
    assert_eq!(
        closed.packets.len(),
        1,
        "the leaver's own leave, and nothing else, before the close: {closed:?}"
    );
    assert_user_packet(&closed.packets[0], "leave", &alice, "单人间");
}

/// The error packets the app can meet decode into its packet model (its
/// screen shows `"error: " + data.msg`): a full room, then the message and
/// the leave of that refused screen (`not in room`), a room that no longer
/// exists, and a stored name the server does not know.
#[test]
fn error_packets_decode_into_the_app_packet_model() {
    let server = TestServer::start();
    let app = App::on(&server);
    let alice = app.sign_up_and_in("13800138000", "alice");
    let bob = app.sign_up_and_in("13900139000", "bob");
    server.create_room_with_capacity("单人间", 1);

    let mut a = app.enter(&alice, "单人间");
    a.wait_for("user", "alice", "create");

    let mut b = app.enter(&bob, "单人间");
    let full = b.next_packet("full room");
    assert_eq!(full.kind, "error", "{full:?}");
    assert_eq!(full.data.msg, "full room");
    assert_eq!(full.data.user.user_name, "bob");
    assert_eq!(full.data.room_name, "单人间");

    b.send_message("有人吗？");
    let not_in = b.next_packet("not in room");
    assert_eq!(not_in.kind, "error", "{not_in:?}");
    assert_eq!(not_in.data.msg, "not in room");
    assert_eq!(not_in.data.user.user_name, "bob");
    assert_eq!(not_in.data.room_name, "单人间");

    let closed = b.close_chat();
    assert_eq!(closed.close_code, Some(1000), "{closed:?}");
    assert_eq!(app.population("单人间"), 1, "alice keeps her seat");

    let mut gone = app.enter(&bob, "不存在的房间");
    let invalid = gone.next_packet("invalid room");
    assert_eq!(invalid.kind, "error", "{invalid:?}");
    assert_eq!(invalid.data.msg, "invalid room");
    assert_eq!(invalid.data.room_name, "不存在的房间");

    let stranger = Session {
        name: "陌生人".into(),
        avatar: "default".into(),
    };
    let mut s = app.enter(&stranger, "单人间");
    let unknown = s.next_packet("user not exist");
    assert_eq!(unknown.kind, "error", "{unknown:?}");
    assert_eq!(unknown.data.msg, "user not exist");
    assert_eq!(unknown.data.user.user_name, "陌生人");
}

/// The app before commit 2212554 also called `GET /chatroom/room` (status 1
/// on entering, 0 on leaving) beside the WebSocket join and leave. Its HTTP
/// leave, after the WebSocket leave has already given the seat back, still
/// answers `leave chatroom` once.
#[test]
fn earlier_app_version_http_leave_after_the_websocket_leave() {
    let server = TestServer::start();
    let app = App::on(&server);
    let alice = app.sign_up_and_in("13800138000", "alice");
    assert_eq!(app.create_room("lobby"), "chatroom create successfully");

    assert_eq!(app.join_or_leave("lobby", "alice", 1), "join chatroom");
    let mut a = app.enter(&alice, "lobby");
    let p = a.next_packet("join after admission");
    assert_user_packet(&p, "join", &alice, "lobby");
    assert_eq!(
        app.population("lobby"),
        1,
        "the admission's seat, not a second"
    );

    let closed = a.close_chat();
    assert_eq!(closed.close_code, Some(1000), "{closed:?}");
    assert_eq!(app.population("lobby"), 0);
    assert_eq!(app.join_or_leave("lobby", "alice", 0), "leave chatroom");
    assert_eq!(app.join_or_leave("lobby", "alice", 0), "user not exist");
}
