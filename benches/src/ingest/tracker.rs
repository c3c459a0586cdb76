//! What every receiver does with the bytes of a connection, whichever way
//! they arrived: count them, optionally hash them, optionally cut them back
//! into the load generator's messages and age each one.

use sha2::{Digest, Sha256};

use super::message::{HEADER_LEN, MessageHeader};
use super::results::StreamReport;

/// How a receiver measures latency: the message size of the load, and how
/// many leading messages of each connection to leave out (warm-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyOptions {
    pub size: usize,
    pub warmup: u64,
}

/// Cuts one connection's byte stream into messages of a fixed size and
/// reports each message's age when its last byte is seen.
#[derive(Clone, Debug)]
pub struct Reassembler {
    options: LatencyOptions,
    /// Bytes of the current message seen so far.
    at: usize,
    head: [u8; HEADER_LEN],
    next_seq: u64,
    /// Complete messages.
    pub messages: u64,
    /// Messages whose header was damaged or out of sequence.
    pub bad: u64,
}

impl Reassembler {
    pub fn new(options: LatencyOptions) -> Self {
        assert!(options.size >= HEADER_LEN, "messages of {} bytes hold no header", options.size);
        Self { options, at: 0, head: [0; HEADER_LEN], next_seq: 0, messages: 0, bad: 0 }
    }

    /// Takes the next bytes of the stream, seen at `seen_ns`; pushes the
    /// age (ns) of every message they complete onto `samples`.
    pub fn push(&mut self, mut data: &[u8], seen_ns: u64, samples: &mut Vec<u64>) {
        let size = self.options.size;
        while !data.is_empty() {
            if self.at < HEADER_LEN {
                let n = (HEADER_LEN - self.at).min(data.len());
                self.head[self.at..self.at + n].copy_from_slice(&data[..n]);
            }
            let take = (size - self.at).min(data.len());
            self.at += take;
            data = &data[take..];
            if self.at == size {
                self.at = 0;
                self.messages += 1;
                match MessageHeader::read(&self.head) {
                    Some(h) if h.seq == self.next_seq => {
                        self.next_seq += 1;
                        if h.seq >= self.options.warmup {
                            samples.push(seen_ns.saturating_sub(h.sent_ns));
                        }
                    }
                    Some(h) => {
                        self.bad += 1;
                        self.next_seq = h.seq + 1;
                    }
                    None => self.bad += 1,
                }
            }
        }
    }
}

/// One connection's accounting.
#[derive(Clone, Debug)]
pub struct StreamStats {
    pub bytes: u64,
    /// Receives (or packets) that carried its bytes.
    pub packets: u64,
    hasher: Option<Sha256>,
    reassembler: Option<Reassembler>,
}

impl StreamStats {
    /// Counts bytes; with `hash` also hashes them (sha256), with `latency`
    /// also reassembles messages.
    pub fn new(hash: bool, latency: Option<LatencyOptions>) -> Self {
        Self {
            bytes: 0,
            packets: 0,
            hasher: hash.then(Sha256::new),
            reassembler: latency.map(Reassembler::new),
        }
    }

    /// Takes a packet of the connection, seen at `seen_ns`.
    #[inline]
    pub fn on_packet(&mut self, data: &[u8], seen_ns: u64, samples: &mut Vec<u64>) {
        self.bytes += data.len() as u64;
        self.packets += 1;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(data);
        }
        if let Some(r) = &mut self.reassembler {
            r.push(data, seen_ns, samples);
        }
    }

    /// The connection's report; `peer` is the sender's address (its local
    /// address), which names the connection on both sides.
    pub fn report(&self, peer: String) -> StreamReport {
        StreamReport {
            peer,
            bytes: self.bytes,
            packets: self.packets,
            sha256: self.hasher.clone().map(|h| super::hex(&h.finalize())),
            bad_messages: self.reassembler.as_ref().map_or(0, |r| r.bad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(size: usize, count: u64, sent: impl Fn(u64) -> u64) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in 0..count {
            let mut m = crate::ingest::message::filler(seq, size);
            MessageHeader { seq, sent_ns: sent(seq), connection: 0 }.write(&mut m);
            out.extend_from_slice(&m);
        }
        out
    }

    #[test]
    fn messages_are_aged_whatever_the_packet_boundaries() {
        let data = stream(100, 10, |seq| 1000 * seq);
        for chunk in [1, 7, 23, 24, 99, 100, 101, 1000] {
            let mut r = Reassembler::new(LatencyOptions { size: 100, warmup: 2 });
            let mut samples = Vec::new();
            for (i, piece) in data.chunks(chunk).enumerate() {
                r.push(piece, 100_000 + i as u64, &mut samples);
            }
            assert_eq!((r.messages, r.bad, samples.len()), (10, 0, 8), "chunks of {chunk}");
            // Message seq is complete in the piece holding its last byte.
            let last_piece = |seq: u64| ((seq + 1) * 100 - 1) / chunk as u64;
            let expected: Vec<u64> = (2..10).map(|seq| 100_000 + last_piece(seq) - 1000 * seq).collect();
            assert_eq!(samples, expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn damage_and_gaps_are_counted() {
        let mut data = stream(64, 4, |_| 5);
        data.drain(64..128); // message 1 lost: 2 comes after 0
        data[64 * 2 + 21] ^= 0xff; // message 3's magic damaged
        let mut r = Reassembler::new(LatencyOptions { size: 64, warmup: 0 });
        let mut samples = Vec::new();
        r.push(&data, 10, &mut samples);
        assert_eq!((r.messages, r.bad, samples), (3, 2, vec![5]));
    }

    #[test]
    fn stats_count_hash_and_report() {
        let mut s = StreamStats::new(true, None);
        let mut samples = Vec::new();
        s.on_packet(b"hello ", 0, &mut samples);
        s.on_packet(b"world", 0, &mut samples);
        let report = s.report("127.0.0.1:5".into());
        assert_eq!((report.bytes, report.packets), (11, 2));
        assert_eq!(
            report.sha256.as_deref(),
            Some(crate::ingest::hex(&Sha256::digest(b"hello world")).as_str())
        );
        assert_eq!(StreamStats::new(false, None).report(String::new()).sha256, None);
    }
}
