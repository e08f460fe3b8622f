//! Churn: K virtual clients in one loop, each cycling connect → WebSocket
//! handshake (tungstenite's, nonblocking) → join → msg → wait for its own
//! msg → leave → close → wait for the server's close.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::hist::{Histogram, Latency};
use crate::net::{self, ReadEnd};
use crate::server::{CpuMark, CpuUse, Server};

enum Stage {
    Idle,
    Connecting(TcpStream),
    Handshaking(MidHandshake<ClientHandshake<TcpStream>>),
    /// Joined and sent its msg; waiting for it to come back.
    AwaitMsg(TcpStream),
    /// Sent leave and close; waiting for the server's close.
    AwaitClose(TcpStream),
}

struct Client {
    stage: Stage,
    leftover: Vec<u8>,
    out: Vec<u8>,
    began: Instant,
    cycle: u64,
}

pub struct ChurnResult {
    pub cycles: u64,
    pub latency: Latency,
    pub cpu: CpuUse,
    pub errors: u64,
    pub first_errors: Vec<String>,
}

pub fn run(server: &Server, clients: usize, warmup: Duration, seconds: Duration) -> ChurnResult {
    let tag = crate::server::run_tag();
    let names: Vec<(String, String)> = (0..clients)
        .map(|k| (format!("3{tag:06}{k:07}"), format!("c{tag}u{k}")))
        .collect();
    crate::server::register_users(server, &names);
    let rooms: Vec<String> = (0..clients).map(|k| format!("c{tag}r{k}")).collect();
    crate::server::create_rooms(server, &rooms, 1);

    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(1024);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut mask = 0x1234_5678u32;
    let mut all: Vec<Client> = (0..clients)
        .map(|_| Client {
            stage: Stage::Idle,
            leftover: Vec::new(),
            out: Vec::new(),
            began: Instant::now(),
            cycle: 0,
        })
        .collect();
    let mut hist = Histogram::new();
    let mut cycles_total = 0u64;
    let mut errors = 0u64;
    let mut first_errors = Vec::new();
    let mut connections = 0u64;
    let started = Instant::now();
    let mut mark: Option<(CpuMark, u64)> = None;
    let request = format!("ws://{}/", server.ws);

    let (result_cpu, measured_cycles) = loop {
        let now = Instant::now();
        if mark.is_none() && now >= started + warmup {
            hist.clear();
            mark = Some((CpuMark::now(server), cycles_total));
        }
        if let Some((begin, cycles_at)) = &mark {
            if now >= started + warmup + seconds {
                break (begin.since(&CpuMark::now(server)), cycles_total - cycles_at);
            }
        }
        for (k, client) in all.iter_mut().enumerate() {
            if matches!(client.stage, Stage::Idle) {
                // Many source addresses: every cycle leaves a connection in
                // TIME_WAIT, and one address has only ~28 000 ports.
                let source = Ipv4Addr::new(127, 0, 0, 2 + (connections % 200) as u8);
                connections += 1;
                match net::connect_from(source, server.ws, true) {
                    Ok(std) => {
                        let mut stream = TcpStream::from_std(std);
                        poll.registry()
                            .register(
                                &mut stream,
                                Token(k),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .expect("register");
                        client.began = Instant::now();
                        client.cycle += 1;
                        client.stage = Stage::Connecting(stream);
                    }
                    Err(e) => {
                        errors += 1;
                        if first_errors.len() < 5 {
                            first_errors.push(format!("connect: {e}"));
                        }
                    }
                }
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .expect("poll");
        for event in events.iter() {
            let k = event.token().0;
            let client = &mut all[k];
            let stage = std::mem::replace(&mut client.stage, Stage::Idle);
            let next = step(
                client,
                stage,
                k,
                &tag,
                &rooms[k],
                &request,
                &mut buffer,
                &mut mask,
            );
            match next {
                Ok(Some(stage)) => client.stage = stage,
                Ok(None) => {
                    cycles_total += 1;
                    hist.record(client.began.elapsed().as_nanos() as u64);
                }
                Err(e) => {
                    errors += 1;
                    if first_errors.len() < 5 {
                        first_errors.push(format!("client {k} cycle {}: {e}", client.cycle));
                    }
                }
            }
        }
    };
    ChurnResult {
        cycles: measured_cycles,
        latency: Latency::of(&hist),
        cpu: result_cpu,
        errors,
        first_errors,
    }
}

/// Advances one client on an event; `Ok(None)` means its cycle is complete
/// (the socket is dropped, so the next loop starts a new one).
#[allow(clippy::too_many_arguments)]
fn step(
    client: &mut Client,
    stage: Stage,
    k: usize,
    tag: &u64,
    room: &str,
    request: &str,
    buffer: &mut [u8],
    mask: &mut u32,
) -> Result<Option<Stage>, String> {
    let user = format!("c{tag}u{k}");
    let after_handshake = |client: &mut Client, mut stream: TcpStream, mask: &mut u32| {
        client.leftover.clear();
        client.out.clear();
        let join = net::packet("join", &user, room, None);
        let text = format!("#C{}#", client.cycle);
        let msg = net::packet("msg", &user, room, Some(&text));
        net::push_text_frame(&mut client.out, join.as_bytes(), mask);
        net::push_text_frame(&mut client.out, msg.as_bytes(), mask);
        net::flush(&mut stream, &mut client.out).map_err(|e| e.to_string())?;
        Ok::<_, String>(Stage::AwaitMsg(stream))
    };
    let handshake = |result: Result<_, HandshakeError<ClientHandshake<TcpStream>>>,
                     client: &mut Client,
                     mask: &mut u32| match result {
        Ok((socket, _response)) => {
            let socket: tungstenite::WebSocket<TcpStream> = socket;
            after_handshake(client, socket.into_inner(), mask)
        }
        Err(HandshakeError::Interrupted(mid)) => Ok(Stage::Handshaking(mid)),
        Err(HandshakeError::Failure(e)) => Err(format!("handshake: {e}")),
    };
    match stage {
        Stage::Idle => Ok(Some(Stage::Idle)),
        Stage::Connecting(stream) => {
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    if let Ok(Some(e)) | Err(e) = stream.take_error() {
                        return Err(format!("connect: {e}"));
                    }
                    return Ok(Some(Stage::Connecting(stream)));
                }
                Err(e) => return Err(format!("connect: {e}")),
            }
            let request = request.into_client_request().map_err(|e| e.to_string())?;
            let mid = ClientHandshake::start(stream, request, None)
                .map_err(|e| format!("handshake: {e}"))?;
            handshake(mid.handshake(), client, mask).map(Some)
        }
        Stage::Handshaking(mid) => handshake(mid.handshake(), client, mask).map(Some),
        Stage::AwaitMsg(stream) => read_phase(client, stream, false, &user, room, buffer, mask),
        Stage::AwaitClose(stream) => read_phase(client, stream, true, &user, room, buffer, mask),
    }
}

fn read_phase(
    client: &mut Client,
    mut stream: TcpStream,
    mut closing: bool,
    user: &str,
    room: &str,
    buffer: &mut [u8],
    mask: &mut u32,
) -> Result<Option<Stage>, String> {
    if !client.out.is_empty() {
        net::flush(&mut stream, &mut client.out).map_err(|e| e.to_string())?;
    }
    let (mut got_msg, mut got_close, mut bad) = (false, false, None);
    let marker = format!("#C{}#", client.cycle);
    let end = net::read_frames(
        &mut stream,
        &mut client.leftover,
        buffer,
        |op, payload| match op {
            OpCode::Data(Data::Text) => {
                if memchr::memmem::find(payload, marker.as_bytes()).is_some() {
                    got_msg = true;
                } else if memchr::memmem::find(payload, br#""type":"error""#).is_some() {
                    bad = Some(String::from_utf8_lossy(payload).into_owned());
                }
            }
            OpCode::Control(Control::Close) => got_close = true,
            _ => {}
        },
    );
    if let Some(bad) = bad {
        return Err(format!("error packet: {bad}"));
    }
    if got_msg && !closing {
        let leave = net::packet("leave", user, room, None);
        net::push_text_frame(&mut client.out, leave.as_bytes(), mask);
        net::push_close_frame(&mut client.out, mask);
        net::flush(&mut stream, &mut client.out).map_err(|e| e.to_string())?;
        closing = true;
    }
    if got_close {
        return if closing {
            Ok(None)
        } else {
            Err("the server closed the WebSocket early".into())
        };
    }
    match end {
        ReadEnd::Eof if closing => Ok(None),
        ReadEnd::Eof => Err("the server closed the connection early".into()),
        ReadEnd::Failed(e) => Err(e),
        ReadEnd::Drained => Ok(Some(if closing {
            Stage::AwaitClose(stream)
        } else {
            Stage::AwaitMsg(stream)
        })),
    }
}
