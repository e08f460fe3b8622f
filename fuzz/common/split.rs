//! Feeding a byte stream to a sans-IO decoder in pieces, keeping the
//! unconsumed bytes the way the reactor does, so a target can compare the
//! outcome of one split with another.

/// Feeds `data` in pieces of the sizes in `pieces` (cycled; 0 counts as 1)
/// to `decode`, which follows the `(consumed, event)` contract. Returns the
/// events produced and the error that stopped the stream, if any.
pub fn feed_in_pieces<E, Err>(
    data: &[u8],
    pieces: &[usize],
    mut decode: impl FnMut(&[u8]) -> Result<(usize, Option<E>), Err>,
) -> (Vec<E>, Option<Err>) {
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
            match decode(&pending) {
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
