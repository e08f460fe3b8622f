//! The WebSocket decoder on arbitrary bytes: it must never panic, never
//! hand out a message over the limit, and give the same events however the
//! stream is split.
#![no_main]

#[path = "../common/split.rs"]
mod split;

use chatroom::ws::{Decoder, Event, Limits, WsError};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_message_bytes: 4096,
    max_fragments: 64,
};

fn run(data: &[u8], pieces: &[usize]) -> (Vec<Event>, Option<WsError>) {
    let mut decoder = Decoder::new(LIMITS);
    let outcome = split::feed_in_pieces(data, pieces, |input| decoder.decode(input));
    for event in &outcome.0 {
        match event {
            Event::Text(text) => assert!(text.len() <= LIMITS.max_message_bytes),
            Event::Binary(bytes) => assert!(bytes.len() <= LIMITS.max_message_bytes),
            Event::Ping(bytes) | Event::Pong(bytes) => assert!(bytes.len() <= 125),
            Event::Close { .. } => {}
        }
    }
    outcome
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, split_sizes) = input;
    let pieces: Vec<usize> = split_sizes.iter().map(|b| usize::from(*b)).collect();
    let whole = run(&data, &[data.len().max(1)]);
    let split = run(&data, &pieces);
    assert_eq!(whole, split, "splitting the stream changed the outcome");
});
