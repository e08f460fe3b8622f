//! Feeding a byte stream to a sans-IO decoder in pieces, keeping the
//! unconsumed bytes the way the reactor does, so a target can compare the
//! outcome of one split with another.

/// What a stream fed in pieces amounted to.
pub struct Fed<E, Err> {
    /// The events, in order.
    pub events: Vec<E>,
    /// The error that stopped the stream, if any.
    pub error: Option<Err>,
    /// The most unconsumed bytes the caller was left holding when the
    /// decoder asked for more: what a connection must buffer between reads.
    pub max_held: usize,
}

/// Feeds `data` in pieces of the sizes in `pieces` (cycled; 0 counts as 1)
/// to `decode`, which follows the `(consumed, event)` contract.
pub fn feed_in_pieces<E, Err>(
    data: &[u8],
    pieces: &[usize],
    mut decode: impl FnMut(&[u8]) -> Result<(usize, Option<E>), Err>,
) -> Fed<E, Err> {
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = Fed {
        events: Vec::new(),
        error: None,
        max_held: 0,
    };
    let mut offset = 0;
    let mut piece = 0;
    while offset < data.len() {
        let size = pieces
            .get(piece % pieces.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        piece += 1;
        let end = offset.saturating_add(size).min(data.len());
        pending.extend_from_slice(&data[offset..end]);
        offset = end;
        loop {
            match decode(&pending) {
                Ok((used, event)) => {
                    assert!(used <= pending.len(), "consumed more than it was given");
                    pending.drain(..used);
                    match event {
                        Some(event) => fed.events.push(event),
                        None if used == 0 => break,
                        None => {}
                    }
                }
                Err(error) => {
                    fed.error = Some(error);
                    return fed;
                }
            }
        }
        fed.max_held = fed.max_held.max(pending.len());
    }
    fed
}

/// Split sizes from fuzzer bytes: each byte is one piece's length.
pub fn pieces(sizes: &[u8]) -> Vec<usize> {
    sizes.iter().map(|b| usize::from(*b)).collect()
}

/// Splits a raw fuzz input into split sizes and the stream: the first byte
/// says how many of the next bytes (up to 15) are piece sizes. Hand-written
/// seeds start with `\0` and are the stream as it would arrive.
pub fn sized_stream(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let count = usize::from(count % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    (pieces(sizes), stream)
}
