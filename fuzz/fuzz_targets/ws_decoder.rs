//! The WebSocket decoder on arbitrary bytes: it must never panic, never
//! hand out a message over the limit, and give the same events however the
//! stream is split.
#![no_main]

use chatroom::ws::{Decoder, Event, Limits, WsError};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_message_bytes: 4096,
    max_fragments: 64,
};

fn run(data: &[u8], pieces: &[usize]) -> (Vec<Event>, Option<WsError>) {
    let mut decoder = Decoder::new(LIMITS);
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut offset = 0;
    let mut piece = 0;
    while offset < data.len() {
        let size = pieces
            .get(piece % pieces.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        piece += 1;
        let end = (offset + size).min(data.len());
        pending.extend_from_slice(&data[offset..end]);
        offset = end;
        loop {
            match decoder.decode(&pending) {
                Ok((used, event)) => {
                    assert!(used <= pending.len(), "consumed more than it was given");
                    pending.drain(..used);
                    match event {
                        Some(event) => {
                            match &event {
                                Event::Text(text) => {
                                    assert!(text.len() <= LIMITS.max_message_bytes)
                                }
                                Event::Binary(bytes) => {
                                    assert!(bytes.len() <= LIMITS.max_message_bytes)
                                }
                                Event::Ping(bytes) | Event::Pong(bytes) => {
                                    assert!(bytes.len() <= 125)
                                }
                                Event::Close { .. } => {}
                            }
                            events.push(event);
                        }
                        None if used == 0 => break,
                        None => {}
                    }
                }
                Err(error) => return (events, Some(error)),
            }
        }
    }
    (events, None)
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, split_sizes) = input;
    let pieces: Vec<usize> = split_sizes.iter().map(|b| usize::from(*b)).collect();
    let whole = run(&data, &[data.len().max(1)]);
    let split = run(&data, &pieces);
    assert_eq!(whole, split, "splitting the stream changed the outcome");
});
