//! Cutting a fuzzer's input into pieces (shared by the targets that need it).

/// Split off a piece whose length is the next byte pair (little-endian), capped at what is left.
pub fn piece<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let len = match data {
        [a, b, rest @ ..] => {
            *data = rest;
            usize::from(u16::from_le_bytes([*a, *b]))
        }
        _ => 0,
    };
    let (head, tail) = data.split_at(len.min(data.len()));
    *data = tail;
    head
}
