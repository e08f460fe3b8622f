//! The request parser on arbitrary bytes: it must never panic, and must
//! produce the same events however the stream is split across reads.
#![no_main]

#[path = "../common/split.rs"]
mod split;

use chatroom::http::request::{Event, HttpError, HttpLimits, RequestParser};
use libfuzzer_sys::fuzz_target;

const LIMITS: HttpLimits = HttpLimits {
    max_head_bytes: 1024,
    max_headers: 16,
    max_body_bytes: 4096,
};

fn run(data: &[u8], pieces: &[usize]) -> (Vec<Event>, Option<HttpError>) {
    let mut parser = RequestParser::new(LIMITS);
    split::feed_in_pieces(data, pieces, |input| parser.parse(input))
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, split_sizes) = input;
    let pieces: Vec<usize> = split_sizes.iter().map(|b| usize::from(*b)).collect();
    let whole = run(&data, &[data.len().max(1)]);
    let split = run(&data, &pieces);
    assert_eq!(whole, split, "splitting the stream changed the outcome");
});
