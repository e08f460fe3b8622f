//! Micro-benchmarks of the per-request and per-message code paths: time and
//! heap allocations per iteration.
//!
//! ```sh
//! cargo bench --bench micro                  # everything, about a minute
//! cargo bench --bench micro -- ws_decode     # names containing "ws_decode"
//! ```
//!
//! The allocation columns come from `divan::AllocProfiler`, installed as the
//! global allocator below; they are what the claims "nothing allocates per
//! frame" are checked against, so read them before the time columns, which
//! are noisy on a shared machine.

use std::hint::black_box;

use chatroom::chat::packet;
use chatroom::http::params;
use chatroom::http::request::{Event as HttpEvent, HttpLimits, RequestParser};
use chatroom::http::response::Response;
use chatroom::ws::{self, Decoder, Event as WsEvent, Limits, OpCode};
use divan::counter::{BytesCount, ItemsCount};
use divan::Bencher;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

/// What a browser sends for the room list on a kept-alive connection.
const GET_LIST: &[u8] = b"GET /chatroom/list HTTP/1.1\r\n\
Host: chat.example.com:5000\r\n\
Connection: keep-alive\r\n\
sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n\
Accept: application/json, text/plain, */*\r\n\
sec-ch-ua-mobile: ?0\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
sec-ch-ua-platform: \"Linux\"\r\n\
Origin: https://chat.example.com\r\n\
Sec-Fetch-Site: same-site\r\n\
Sec-Fetch-Mode: cors\r\n\
Sec-Fetch-Dest: empty\r\n\
Referer: https://chat.example.com/\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: zh-CN,zh;q=0.9,en;q=0.8\r\n\
\r\n";

/// A login form as a browser posts it.
fn post_login() -> Vec<u8> {
    let body = "user_tel=13800000000&user_password=secret-123456";
    format!(
        "POST /auth/login HTTP/1.1\r\n\
Host: chat.example.com:5000\r\n\
Connection: keep-alive\r\n\
Content-Length: {}\r\n\
Accept: application/json, text/plain, */*\r\n\
Content-Type: application/x-www-form-urlencoded\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Origin: https://chat.example.com\r\n\
Referer: https://chat.example.com/\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: zh-CN,zh;q=0.9,en;q=0.8\r\n\
\r\n\
{body}",
        body.len()
    )
    .into_bytes()
}

/// A short chat line, in ASCII and in Chinese, for the payload benches.
const ASCII_LINE: &str = "hello everyone, the meeting moved to 3pm; see you in room B! ";
const CHINESE_LINE: &str = "大家好，会议改到下午三点，我们在二号会议室见！";

/// `len` bytes of text made by repeating `line`, cut on a character boundary
/// at or below `len`.
fn text_of(line: &str, len: usize) -> String {
    let mut text = String::with_capacity(len + line.len());
    while text.len() < len {
        text.push_str(line);
    }
    let mut end = len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// A client frame as a browser would send it: FIN, masked, shortest length.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x3c, 0xa1, 0x5e, 0x07];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, mask_byte)| byte ^ mask_byte),
    );
    frame
}

const JOIN_PACKET: &str = r#"{"type":"join","data":{"user":{"user_name":"ann","user_avatar":"https://chat.example.com/avatars/ann.png"},"room_name":"lobby","msg":""}}"#;
const MSG_PACKET: &str = r#"{"type":"msg","data":{"user":{"user_name":"ann","user_avatar":""},"room_name":"lobby","msg":"hello everyone, the meeting moved to 3pm"}}"#;

mod http_parse {
    use super::*;

    /// One request per call, as on a keep-alive connection: the parser is
    /// the connection's and outlives the request.
    fn parse_one(bencher: Bencher, input: &[u8]) {
        let mut parser = RequestParser::new(HttpLimits::default());
        bencher
            .counter(BytesCount::of_slice(input))
            .bench_local(|| match parser.parse(black_box(input)) {
                Ok((used, Some(HttpEvent::Request(request)))) if used == input.len() => request,
                other => panic!("not one complete request: {other:?}"),
            });
    }

    #[divan::bench]
    fn get_list_keepalive(bencher: Bencher) {
        parse_one(bencher, GET_LIST);
    }

    #[divan::bench]
    fn post_urlencoded(bencher: Bencher) {
        parse_one(bencher, &post_login());
    }

    /// 16 pipelined GETs in one buffer, consumed the way the reactor does.
    #[divan::bench]
    fn pipelined_16(bencher: Bencher) {
        let input = GET_LIST.repeat(16);
        let mut parser = RequestParser::new(HttpLimits::default());
        bencher
            .counter(BytesCount::of_slice(&input))
            .counter(ItemsCount::new(16usize))
            .bench_local(|| {
                let mut consumed = 0;
                let mut requests = 0;
                while consumed < input.len() {
                    match parser.parse(black_box(&input[consumed..])) {
                        Ok((used, Some(HttpEvent::Request(request)))) => {
                            consumed += used;
                            requests += 1;
                            black_box(request);
                        }
                        other => panic!("pipeline broke: {other:?}"),
                    }
                }
                requests
            });
    }
}

mod http_params {
    use super::*;

    #[divan::bench]
    fn query(bencher: Bencher) {
        let query = "room_name=%E5%A4%A7%E5%8E%85&user_name=ann&status=1";
        bencher.bench_local(|| params::extract(black_box(Some(query)), None, b"").unwrap());
    }

    #[divan::bench]
    fn urlencoded_body(bencher: Bencher) {
        let body = b"user_tel=13800000000&user_name=%E5%BC%A0%E4%B8%89&user_password=secret-123456";
        let content_type = Some(&b"application/x-www-form-urlencoded"[..]);
        bencher.bench_local(|| params::extract(None, content_type, black_box(body)).unwrap());
    }

    #[divan::bench]
    fn json_body(bencher: Bencher) {
        let body = r#"{"user_tel":13800000000,"user_name":"张三","user_password":"secret-123456"}"#;
        let content_type = Some(&b"application/json; charset=utf-8"[..]);
        bencher.bench_local(|| {
            params::extract(None, content_type, black_box(body.as_bytes())).unwrap()
        });
    }
}

mod http_response {
    use super::*;

    /// What `/chatroom/list` answers with a handful of rooms, from value to
    /// wire bytes.
    #[divan::bench]
    fn list_reply_encode(bencher: Bencher) {
        #[derive(serde::Serialize)]
        struct Entry {
            name: &'static str,
            population: usize,
        }
        let rooms: Vec<Entry> = ["lobby", "rust", "大厅", "music", "games"]
            .into_iter()
            .map(|name| Entry {
                name,
                population: 12,
            })
            .collect();
        bencher.bench_local(|| {
            let response = Response::json(200, black_box(&rooms));
            response.encode(false, true, false, "*")
        });
    }
}

mod ws_decode {
    use super::*;

    /// One masked text frame of `len` payload bytes per call; the decoder is
    /// the connection's and is reused.
    #[divan::bench(args = [16, 128, 4096, 65536])]
    fn text_frame(bencher: Bencher, len: usize) {
        let input = masked_frame(0x1, text_of(ASCII_LINE, len).as_bytes());
        let mut decoder = Decoder::new(Limits::default());
        bencher.counter(BytesCount::new(len)).bench_local(|| {
            match decoder.decode(black_box(&input)) {
                Ok((used, Some(WsEvent::Text(text)))) if used == input.len() => text,
                other => panic!("not one text message: {other:?}"),
            }
        });
    }

    /// 64 chat packets arriving in one read.
    #[divan::bench]
    fn batch_of_64_packets(bencher: Bencher) {
        let frame = masked_frame(0x1, MSG_PACKET.as_bytes());
        let input = frame.repeat(64);
        let mut decoder = Decoder::new(Limits::default());
        bencher
            .counter(BytesCount::of_slice(&input))
            .counter(ItemsCount::new(64usize))
            .bench_local(|| {
                let mut consumed = 0;
                while consumed < input.len() {
                    match decoder.decode(black_box(&input[consumed..])) {
                        Ok((used, Some(WsEvent::Text(text)))) => {
                            consumed += used;
                            black_box(text);
                        }
                        other => panic!("batch broke: {other:?}"),
                    }
                }
            });
    }
}

mod ws_encode {
    use super::*;

    /// Header and payload appended to a reused buffer: the frame itself
    /// costs no allocation.
    #[divan::bench(args = [16, 128, 4096])]
    fn text_frame_into_buffer(bencher: Bencher, len: usize) {
        let payload = text_of(ASCII_LINE, len);
        let mut out = Vec::with_capacity(len + ws::frame::MAX_SERVER_HEADER_LEN);
        bencher.counter(BytesCount::new(len)).bench_local(|| {
            out.clear();
            ws::encode_frame(OpCode::Text, black_box(payload.as_bytes()), &mut out);
            out.len()
        });
    }

    /// `text_frame`, which returns a fresh `Vec` (echo and error paths).
    #[divan::bench(args = [16, 128, 4096])]
    fn text_frame_owned(bencher: Bencher, len: usize) {
        let payload = text_of(ASCII_LINE, len);
        bencher
            .counter(BytesCount::new(len))
            .bench_local(|| ws::text_frame(black_box(payload.as_bytes())));
    }
}

mod unmask {
    use super::*;

    #[divan::bench(args = [16, 128, 1024, 4096, 65536])]
    fn in_place(bencher: Bencher, len: usize) {
        let mut data = text_of(ASCII_LINE, len).into_bytes();
        let mask = [0x3c, 0xa1, 0x5e, 0x07];
        bencher.counter(BytesCount::new(len)).bench_local(|| {
            ws::frame::unmask(black_box(&mut data), black_box(mask), 0);
        });
    }
}

mod utf8 {
    use super::*;

    /// The check the decoder makes on every text message.
    #[divan::bench(args = [128, 4096, 65536])]
    fn validate_ascii(bencher: Bencher, len: usize) {
        let text = text_of(ASCII_LINE, len).into_bytes();
        bencher
            .counter(BytesCount::new(text.len()))
            .bench_local(|| std::str::from_utf8(black_box(&text)).is_ok());
    }

    #[divan::bench(args = [128, 4096, 65536])]
    fn validate_chinese(bencher: Bencher, len: usize) {
        let text = text_of(CHINESE_LINE, len).into_bytes();
        bencher
            .counter(BytesCount::new(text.len()))
            .bench_local(|| std::str::from_utf8(black_box(&text)).is_ok());
    }

    /// The `--max-msg-chars` check counts scalar values of every `msg`.
    #[divan::bench(args = [128, 4096])]
    fn count_chars_chinese(bencher: Bencher, len: usize) {
        let text = text_of(CHINESE_LINE, len);
        bencher
            .counter(BytesCount::new(text.len()))
            .bench_local(|| black_box(text.as_str()).chars().count());
    }
}

mod chat_packet {
    use super::*;

    #[divan::bench]
    fn parse_join(bencher: Bencher) {
        bencher
            .counter(BytesCount::of_str(JOIN_PACKET))
            .bench_local(|| packet::parse(black_box(JOIN_PACKET)).unwrap());
    }

    #[divan::bench]
    fn parse_msg(bencher: Bencher) {
        bencher
            .counter(BytesCount::of_str(MSG_PACKET))
            .bench_local(|| packet::parse(black_box(MSG_PACKET)).unwrap());
    }

    /// A long message in Chinese: JSON string unescaping dominates.
    #[divan::bench]
    fn parse_msg_chinese_2000_chars(bencher: Bencher) {
        let msg: String = CHINESE_LINE.chars().cycle().take(2000).collect();
        let text = serde_json::json!({
            "type": "msg",
            "data": {"user": {"user_name": "ann", "user_avatar": ""}, "room_name": "lobby", "msg": msg},
        })
        .to_string();
        bencher
            .counter(BytesCount::of_str(&text))
            .bench_local(|| packet::parse(black_box(&text)).unwrap());
    }
}

mod broadcast_encode {
    use super::*;

    /// The frame every member of the room gets, built once per message.
    #[divan::bench]
    fn server_frame_msg(bencher: Bencher) {
        bencher.bench_local(|| {
            packet::server_frame(
                "msg",
                black_box("ann"),
                "https://chat.example.com/avatars/ann.png",
                "lobby",
                "hello everyone, the meeting moved to 3pm",
                Some(1_764_000_000_000),
            )
        });
    }

    #[divan::bench]
    fn server_frame_msg_chinese_2000_chars(bencher: Bencher) {
        let msg: String = CHINESE_LINE.chars().cycle().take(2000).collect();
        bencher.counter(BytesCount::of_str(&msg)).bench_local(|| {
            packet::server_frame(
                "msg",
                black_box("ann"),
                "",
                "lobby",
                black_box(&msg),
                Some(1_764_000_000_000),
            )
        });
    }
}

mod redis_resp {
    use std::time::Instant;

    use chatroom::redis::{
        Command, Link, LinkConfig, LinkEvent, Reply, RespDecoder, RespLimits, Role, Status,
    };

    use super::*;

    /// A pub/sub push as the subscriber link reads it, `payload` bytes of
    /// chat line in it.
    #[divan::bench(args = [128, 4096])]
    fn decode_message(bencher: Bencher, payload: usize) {
        let push = Reply::Array(Some(vec![
            Reply::Bulk(Some(b"message".to_vec())),
            Reply::Bulk(Some(b"chatroom:room:lobby".to_vec())),
            Reply::Bulk(Some(text_of(ASCII_LINE, payload).into_bytes())),
        ]))
        .to_bytes();
        let mut decoder = RespDecoder::new(RespLimits::default());
        bencher
            .counter(BytesCount::of_slice(&push))
            .bench_local(|| match decoder.decode(black_box(&push)) {
                Ok(Status::Complete((reply, _))) => reply,
                other => panic!("{other:?}"),
            });
    }

    /// The replies to a pipeline of SET, GET and INCR, one at a time as
    /// the link takes them from a read.
    #[divan::bench]
    fn decode_pipeline_1000(bencher: Bencher) {
        let mut stream = Vec::new();
        for n in 0..1000 {
            match n % 3 {
                0 => stream.extend_from_slice(b"+OK\r\n"),
                1 => Reply::Bulk(Some(format!("value-{n}").into_bytes())).encode(&mut stream),
                _ => Reply::Integer(n).encode(&mut stream),
            }
        }
        let mut decoder = RespDecoder::new(RespLimits::default());
        bencher.counter(ItemsCount::new(1000usize)).bench_local(|| {
            let mut rest = black_box(&stream[..]);
            while let Ok(Status::Complete((reply, len))) = decoder.decode(rest) {
                black_box(reply);
                rest = &rest[len..];
            }
        });
    }

    #[divan::bench]
    fn encode_command_set(bencher: Bencher) {
        let value = text_of(ASCII_LINE, 128);
        let mut out = Vec::with_capacity(1024);
        bencher.bench_local(|| {
            out.clear();
            let command = Command::new("SET")
                .arg(black_box("chatroom:room:lobby:seq"))
                .arg(black_box(&value));
            command.encode(&mut out)
        });
    }

    /// The whole sans-IO round of a command on the link: send (encode and
    /// queue), take the bytes to write, feed the reply, take the event.
    #[divan::bench]
    fn link_round_trip_1000(bencher: Bencher) {
        let now = Instant::now();
        let mut link = Link::new(LinkConfig::new(Role::Commands), now);
        while link.poll_event().is_some() {}
        link.handle_connected(now);
        while link.poll_event().is_some() {}
        let command = Command::new("INCR").arg("chatroom:room:lobby:seq");
        let replies = b":1\r\n".repeat(1000);
        bencher.counter(ItemsCount::new(1000usize)).bench_local(|| {
            for tag in 0..1000 {
                let _ = link.send(black_box(&command), tag, now);
            }
            let written = link.poll_transmit().map_or(0, <[u8]>::len);
            link.advance_transmit(written);
            link.handle_input(black_box(&replies), now);
            let mut replied = 0;
            while let Some(event) = link.poll_event() {
                if matches!(event, LinkEvent::Reply { .. }) {
                    replied += 1;
                }
            }
            assert_eq!(replied, 1000);
        });
    }
}
