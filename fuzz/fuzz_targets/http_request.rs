//! The request parser on arbitrary bytes: it must never panic, and must
//! produce the same events however the stream is split across reads.
#![no_main]

use chatroom::http::request::{Event, HttpError, HttpLimits, RequestParser};
use libfuzzer_sys::fuzz_target;

/// Feeds `data` in pieces of the given sizes (cycled), keeping unconsumed
/// bytes the way the reactor does.
fn run(data: &[u8], pieces: &[usize]) -> (Vec<Event>, Option<HttpError>) {
    let limits = HttpLimits {
        max_head_bytes: 1024,
        max_headers: 16,
        max_body_bytes: 4096,
    };
    let mut parser = RequestParser::new(limits);
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
            match parser.parse(&pending) {
                Ok((used, event)) => {
                    assert!(used <= pending.len(), "consumed more than it was given");
                    pending.drain(..used);
                    match event {
                        Some(event) => events.push(event),
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
