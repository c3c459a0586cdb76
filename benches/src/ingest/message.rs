//! The messages the load generator writes. Each message of `size` bytes
//! starts with a [`MessageHeader`] (sequence number, send time, connection
//! index, magic) and is filled up with bytes fixed per connection. A
//! receiver that knows `size` cuts a connection's byte stream back into
//! messages and ages each one ([`crate::ingest::tracker::Reassembler`]).

/// Bytes of a message header; the smallest message.
pub const HEADER_LEN: usize = 24;
/// Last 4 bytes of every header, "RING" in ASCII.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RING");

/// The first [`HEADER_LEN`] bytes of a message, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    /// Messages sent before this one on its connection.
    pub seq: u64,
    /// `CLOCK_MONOTONIC` ns right before the message's first byte was
    /// handed to the kernel.
    pub sent_ns: u64,
    /// Index of the connection in the load generator.
    pub connection: u32,
}

impl MessageHeader {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&self.seq.to_le_bytes());
        buf[8..16].copy_from_slice(&self.sent_ns.to_le_bytes());
        buf[16..20].copy_from_slice(&self.connection.to_le_bytes());
        buf[20..24].copy_from_slice(&MAGIC.to_le_bytes());
    }

    /// Reads a header; `None` if `buf` is short or its magic is wrong.
    pub fn read(buf: &[u8]) -> Option<Self> {
        let word = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let half = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        if buf.len() < HEADER_LEN || half(20) != MAGIC {
            return None;
        }
        Some(Self { seq: word(0), sent_ns: word(8), connection: half(16) })
    }
}

/// `len` pseudo-random bytes (xorshift64) from `seed`: the body of every
/// message of one connection.
pub fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_checks_its_magic() {
        let header = MessageHeader { seq: 7, sent_ns: u64::MAX - 3, connection: 9999 };
        let mut buf = filler(1, 64);
        header.write(&mut buf);
        assert_eq!(MessageHeader::read(&buf), Some(header));
        assert_eq!(&buf[20..24], b"RING");
        assert_eq!(MessageHeader::read(&buf[..23]), None);
        buf[21] ^= 1;
        assert_eq!(MessageHeader::read(&buf), None);
    }

    #[test]
    fn filler_depends_on_the_seed() {
        assert_eq!(filler(3, 100), filler(3, 100));
        assert_ne!(filler(3, 100), filler(4, 100));
        assert!(filler(3, 1000).iter().any(|&b| b != 0));
    }
}
