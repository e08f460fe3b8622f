//! The RESP2 decoder, command encoder and reply encoder.
//!
//! - `Raw`: arbitrary bytes, split at fuzzer-chosen points. Never a panic;
//!   the same replies and error whole, split and byte by byte; errors
//!   sticky; nothing decoded breaks a limit; the bytes a connection is left
//!   holding stay within `max_reply_bytes + max_bulk_bytes + 2`; every
//!   reply re-encodes to bytes that decode back equal; and never a
//!   `CodecDisagreement`: whatever our bounding scan accepts, the
//!   `redis-protocol` crate reads the same way, to the same length.
//! - `Tree`: a reply built by the fuzzer, encoded, split: it decodes back
//!   exactly when it is within the limits, and is refused with a limit
//!   error when it is not.
//! - `Command`: any arguments, encoded by the crate, read back by our
//!   decoder as the same array of bulk strings.
#![no_main]

#[path = "../common/split.rs"]
mod split;

use arbitrary::{Arbitrary, Unstructured};
use chatroom::redis::{Command, Reply, RespDecoder, RespError, RespLimits, Status};
use libfuzzer_sys::fuzz_target;

const LIMITS: RespLimits = RespLimits {
    max_bulk_bytes: 256,
    max_elements: 64,
    max_depth: 4,
    max_reply_bytes: 2048,
};

/// The `(consumed, event)` contract split.rs speaks, over the decoder's
/// `Status`.
fn step(decoder: &mut RespDecoder, input: &[u8]) -> Result<(usize, Option<Reply>), RespError> {
    match decoder.decode(input)? {
        Status::Complete((reply, len)) => {
            assert!(
                len > 0 && len <= input.len(),
                "consumed {len} of {}",
                input.len()
            );
            Ok((len, Some(reply)))
        }
        Status::Partial => Ok((0, None)),
    }
}

fn run(data: &[u8], pieces: &[usize], limits: RespLimits) -> (Vec<Reply>, Option<RespError>) {
    let mut decoder = RespDecoder::new(limits);
    let fed = split::feed_in_pieces(data, pieces, |input| step(&mut decoder, input));
    assert!(
        fed.max_held <= limits.max_reply_bytes + limits.max_bulk_bytes + 2,
        "the caller was left holding {} bytes",
        fed.max_held
    );
    if let Some(error) = &fed.error {
        assert_ne!(
            *error,
            RespError::CodecDisagreement,
            "the crate read it differently"
        );
        // Sticky, whatever comes next.
        assert_eq!(decoder.decode(b"+OK\r\n").as_ref(), Err(error));
        assert!(decoder.has_failed());
    }
    for reply in &fed.events {
        check_within_limits(reply, &limits);
        round_trip(reply, limits);
    }
    (fed.events, fed.error)
}

/// Depth, element count and string sizes of a decoded reply.
fn check_within_limits(reply: &Reply, limits: &RespLimits) {
    let mut elements = 0;
    let depth = walk(reply, limits, &mut elements);
    assert!(depth <= limits.max_depth, "depth {depth}");
    // The reply itself is not counted.
    assert!(
        elements - 1 <= limits.max_elements,
        "{} elements",
        elements - 1
    );
    assert!(reply.to_bytes().len() <= limits.max_reply_bytes);
}

/// Returns the array depth, counting every value into `elements`.
fn walk(reply: &Reply, limits: &RespLimits, elements: &mut usize) -> usize {
    *elements += 1;
    match reply {
        Reply::Simple(text) | Reply::Error(text) => {
            assert!(text.len() <= limits.max_bulk_bytes);
            assert!(!text.contains(['\r', '\n']));
            0
        }
        Reply::Bulk(Some(bytes)) => {
            assert!(bytes.len() <= limits.max_bulk_bytes);
            0
        }
        Reply::Integer(_) | Reply::Bulk(None) => 0,
        Reply::Array(None) => 1,
        Reply::Array(Some(items)) => {
            1 + items
                .iter()
                .map(|item| walk(item, limits, elements))
                .max()
                .unwrap_or(0)
        }
    }
}

/// Encoded again, a decoded reply decodes to itself, in one piece.
fn round_trip(reply: &Reply, limits: RespLimits) {
    let bytes = reply.to_bytes();
    let mut decoder = RespDecoder::new(limits);
    match decoder.decode(&bytes) {
        Ok(Status::Complete((again, len))) => {
            assert_eq!(&again, reply, "re-encoded reply decodes differently");
            assert_eq!(len, bytes.len());
        }
        other => panic!("re-encoded reply {bytes:?} gave {other:?}"),
    }
}

/// A reply as the fuzzer builds it.
#[derive(Arbitrary, Debug)]
enum Tree {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Tree>>),
}

impl Tree {
    /// The reply; past depth 12 arrays become integers, keeping the input
    /// shape from costing stack.
    fn reply(&self, depth: usize) -> Reply {
        // Status lines cannot hold CR or LF; the encoder would swap them
        // for spaces, so the expected value does too.
        let line = |text: &str| text.replace(['\r', '\n'], " ");
        match self {
            Tree::Simple(text) => Reply::Simple(line(text)),
            Tree::Error(text) => Reply::Error(line(text)),
            Tree::Integer(value) => Reply::Integer(*value),
            Tree::Bulk(bytes) => Reply::Bulk(bytes.clone()),
            Tree::Array(_) if depth >= 12 => Reply::Integer(0),
            Tree::Array(None) => Reply::Array(None),
            Tree::Array(Some(items)) => Reply::Array(Some(
                items.iter().map(|item| item.reply(depth + 1)).collect(),
            )),
        }
    }
}

/// Whether a reply fits the limits, computed from the value.
fn fits(reply: &Reply, limits: &RespLimits) -> bool {
    fn strings_and_depth(
        reply: &Reply,
        limits: &RespLimits,
        elements: &mut usize,
    ) -> Option<usize> {
        *elements += 1;
        match reply {
            Reply::Simple(text) | Reply::Error(text) => {
                (text.len() <= limits.max_bulk_bytes).then_some(0)
            }
            Reply::Bulk(Some(bytes)) => (bytes.len() <= limits.max_bulk_bytes).then_some(0),
            Reply::Integer(_) | Reply::Bulk(None) => Some(0),
            Reply::Array(None) => Some(1),
            Reply::Array(Some(items)) => {
                let mut deepest = 0;
                for item in items {
                    deepest = deepest.max(strings_and_depth(item, limits, elements)?);
                }
                Some(deepest + 1)
            }
        }
    }
    let mut elements = 0;
    strings_and_depth(reply, limits, &mut elements).is_some_and(|depth| depth <= limits.max_depth)
        && elements - 1 <= limits.max_elements
        && reply.to_bytes().len() <= limits.max_reply_bytes
}

// Layout: a mode byte (mod 3). 0: a byte giving how many split sizes follow
// (`\0` for none), the sizes, then the stream as it would arrive (the seeds
// are hand-written this way). 1: a reply tree and split sizes, read with
// `arbitrary`. 2: command arguments, read with `arbitrary`.
fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let (pieces, stream) = split::sized_stream(rest);
            let whole = run(stream, &[stream.len().max(1)], LIMITS);
            let split = run(stream, &pieces, LIMITS);
            assert_eq!(whole, split, "splitting the stream changed the outcome");
            if stream.len() <= 4096 {
                let by_byte = run(stream, &[1], LIMITS);
                assert_eq!(whole, by_byte, "byte by byte changed the outcome");
            }
        }
        1 => {
            let Ok((tree, sizes)) = <(Tree, Vec<u8>)>::arbitrary_take_rest(Unstructured::new(rest))
            else {
                return;
            };
            let reply = tree.reply(0);
            let mut stream = reply.to_bytes();
            // A second reply behind it: the first must end exactly where it
            // should.
            stream.extend_from_slice(b":7\r\n");
            let (replies, error) = run(&stream, &split::pieces(&sizes), LIMITS);
            if fits(&reply, &LIMITS) {
                assert_eq!(error, None);
                assert_eq!(replies, vec![reply, Reply::Integer(7)]);
            } else {
                assert!(replies.is_empty(), "{replies:?}");
                assert!(
                    matches!(
                        error,
                        Some(
                            RespError::BulkTooLarge
                                | RespError::TooManyElements
                                | RespError::TooDeep
                                | RespError::ReplyTooLarge
                        )
                    ),
                    "{error:?}"
                );
            }
        }
        _ => {
            let Ok(args) = <Vec<Vec<u8>>>::arbitrary_take_rest(Unstructured::new(rest)) else {
                return;
            };
            let mut command = Command::default();
            for arg in &args {
                command.push_arg(arg);
            }
            let bytes = command.to_bytes();
            assert_eq!(bytes.len(), command.encoded_len());
            let collected: Vec<&[u8]> = command.args().collect();
            assert_eq!(
                collected,
                args.iter().map(Vec::as_slice).collect::<Vec<_>>()
            );
            let unlimited = RespLimits {
                max_bulk_bytes: usize::MAX / 4,
                max_elements: usize::MAX / 4,
                max_depth: 1,
                max_reply_bytes: usize::MAX / 4,
            };
            let mut decoder = RespDecoder::new(unlimited);
            let expected = Reply::Array(Some(
                args.iter()
                    .map(|arg| Reply::Bulk(Some(arg.clone())))
                    .collect(),
            ));
            assert_eq!(
                decoder.decode(&bytes),
                Ok(Status::Complete((expected, bytes.len())))
            );
        }
    }
});
