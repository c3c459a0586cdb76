//! The bridge's wire protocol (docs/BRIDGE.md): length-prefixed frames,
//! little-endian integers. Decoding checks every length against a bound
//! before it allocates or reads, and a malformed frame is a
//! [`WireError`], never a panic.

use std::io::{self, Read};

/// First bytes of a HELLO frame.
pub const MAGIC: [u8; 8] = *b"RNGSTBRG";
/// Protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Largest frame (type byte and body): a record of up to 64 MiB of payload
/// and its header. Channels whose records may be larger are not exported.
pub const MAX_FRAME: u32 = (64 << 20) + 64;
/// Largest control frame (every type but RECORD).
pub const MAX_CONTROL_FRAME: u32 = 64 << 10;
/// Bytes of a RECORD frame before its payload: length, type, header.
pub const RECORD_FRAME_OVERHEAD: usize = 4 + 1 + RECORD_HEADER;
/// Bytes of a RECORD frame's header after its type byte.
const RECORD_HEADER: usize = 4 + 4 + 2 + 2 + 8 + 8;
/// Longest name or reason string.
const MAX_TEXT: usize = 1024;
/// Most shards a channel has (shm-bus's limit).
pub const MAX_SHARDS: u32 = 64;

/// Frame types.
pub mod frame_type {
    pub const HELLO: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const RESUME: u8 = 3;
    pub const RECORD: u8 = 4;
    pub const ACK: u8 = 5;
    pub const END: u8 = 6;
    pub const PING: u8 = 7;
    pub const PONG: u8 = 8;
    pub const CLOSE: u8 = 9;
}

/// OFFER flag: the channel goes back to the host whose stage it serves
/// (an egress channel): the importer publishes it under its own name.
pub const OFFER_RETURN: u32 = 1;

/// What was wrong with what the peer sent.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} for its type {frame_type}")]
    TooLong { frame_type: u8, len: u32, max: u32 },
    #[error("frame of type {frame_type} is {len} bytes, too short for its fields")]
    TooShort { frame_type: u8, len: u32 },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("not a ringest bridge (magic {0:02x?})")]
    BadMagic([u8; 8]),
    #[error("peer speaks protocol version {0}, this build {VERSION}")]
    BadVersion(u16),
    #[error("{0}")]
    Invalid(String),
}

/// A frame other than RECORD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    Hello { lossy: bool, window: u64, name: String },
    Offer { id: u32, generation: u64, capacity: u64, shards: u32, flags: u32, name: String },
    Resume { id: u32, generation: u64, answer: ResumeAnswer },
    Ack { id: u32, generation: u64, shard: u32, next_seq: u64 },
    End { id: u32, generation: u64 },
    Ping { sent_ns: u64 },
    Pong { sent_ns: u64 },
    Close { reason: String },
}

/// The importer's answer to an OFFER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeAnswer {
    /// Per shard, the sequence number it wants next: it holds every record
    /// below it (0: it holds none of this generation).
    Accept {
        next_seq: Vec<u64>,
    },
    Refuse {
        reason: String,
    },
}

/// The header of a RECORD frame; its payload follows on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub id: u32,
    pub shard: u32,
    pub kind: u16,
    pub seq: u64,
    pub timestamp_ns: u64,
    pub payload_len: u32,
}

/// Appends a RECORD frame to `out`.
pub fn put_record(
    out: &mut Vec<u8>,
    id: u32,
    shard: u32,
    kind: u16,
    seq: u64,
    timestamp_ns: u64,
    payload: &[u8],
) {
    let len = 1 + RECORD_HEADER + payload.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(frame_type::RECORD);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&shard.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&timestamp_ns.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends a control frame to `out`.
pub fn put_control(out: &mut Vec<u8>, control: &Control) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match control {
        Control::Hello { lossy, window, name } => {
            out.push(frame_type::HELLO);
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.push(u8::from(*lossy));
            out.push(0);
            out.extend_from_slice(&window.to_le_bytes());
            put_text(out, name);
        }
        Control::Offer { id, generation, capacity, shards, flags, name } => {
            out.push(frame_type::OFFER);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&generation.to_le_bytes());
            out.extend_from_slice(&capacity.to_le_bytes());
            out.extend_from_slice(&shards.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            put_text(out, name);
        }
        Control::Resume { id, generation, answer } => {
            out.push(frame_type::RESUME);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&generation.to_le_bytes());
            match answer {
                ResumeAnswer::Accept { next_seq } => {
                    out.push(1);
                    out.extend_from_slice(&(next_seq.len() as u32).to_le_bytes());
                    for seq in next_seq {
                        out.extend_from_slice(&seq.to_le_bytes());
                    }
                }
                ResumeAnswer::Refuse { reason } => {
                    out.push(0);
                    put_text(out, reason);
                }
            }
        }
        Control::Ack { id, generation, shard, next_seq } => {
            out.push(frame_type::ACK);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&generation.to_le_bytes());
            out.extend_from_slice(&shard.to_le_bytes());
            out.extend_from_slice(&next_seq.to_le_bytes());
        }
        Control::End { id, generation } => {
            out.push(frame_type::END);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&generation.to_le_bytes());
        }
        Control::Ping { sent_ns } | Control::Pong { sent_ns } => {
            let t = if matches!(control, Control::Ping { .. }) { frame_type::PING } else { frame_type::PONG };
            out.push(t);
            out.extend_from_slice(&sent_ns.to_le_bytes());
        }
        Control::Close { reason } => {
            out.push(frame_type::CLOSE);
            put_text(out, reason);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// A string as a u16 length and UTF-8 bytes, cut at [`MAX_TEXT`] bytes (on
/// a character boundary).
fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

/// What the next frame is.
#[derive(Debug)]
pub enum Incoming {
    Control(Control),
    /// A record whose payload (`payload_len` bytes) is still to be read
    /// from the stream.
    Record(RecordHeader),
}

/// Reads the next frame's head: a whole control frame (into `scratch`),
/// or a record's header with the payload left on the stream.
pub fn read_frame(stream: &mut impl Read, scratch: &mut Vec<u8>) -> Result<Incoming, WireError> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let frame_type = head[4];
    if len == 0 {
        return Err(WireError::TooShort { frame_type, len });
    }
    let body = len - 1;
    if frame_type == frame_type::RECORD {
        if len > MAX_FRAME {
            return Err(WireError::TooLong { frame_type, len, max: MAX_FRAME });
        }
        if (body as usize) < RECORD_HEADER {
            return Err(WireError::TooShort { frame_type, len });
        }
        let mut h = [0u8; RECORD_HEADER];
        stream.read_exact(&mut h)?;
        let mut f = Fields { bytes: &h, frame_type, len };
        let id = f.u32()?;
        let shard = f.u32()?;
        let kind = f.u16()?;
        let _flags = f.u16()?;
        let seq = f.u64()?;
        let timestamp_ns = f.u64()?;
        let payload_len = body - RECORD_HEADER as u32;
        return Ok(Incoming::Record(RecordHeader { id, shard, kind, seq, timestamp_ns, payload_len }));
    }
    if len > MAX_CONTROL_FRAME {
        return Err(WireError::TooLong { frame_type, len, max: MAX_CONTROL_FRAME });
    }
    scratch.clear();
    scratch.resize(body as usize, 0);
    stream.read_exact(scratch)?;
    decode_control(frame_type, scratch, len).map(Incoming::Control)
}

/// Decodes the body of a control frame.
pub fn decode_control(frame_type: u8, body: &[u8], len: u32) -> Result<Control, WireError> {
    let mut f = Fields { bytes: body, frame_type, len };
    let control = match frame_type {
        frame_type::HELLO => {
            let magic: [u8; 8] = f.take(8)?.try_into().map_err(|_| f.short())?;
            if magic != MAGIC {
                return Err(WireError::BadMagic(magic));
            }
            let version = f.u16()?;
            if version != VERSION {
                return Err(WireError::BadVersion(version));
            }
            let lossy = match f.u8()? {
                0 => false,
                1 => true,
                other => return Err(WireError::Invalid(format!("HELLO mode {other} is neither 0 nor 1"))),
            };
            let _reserved = f.u8()?;
            let window = f.u64()?;
            Control::Hello { lossy, window, name: f.text()? }
        }
        frame_type::OFFER => Control::Offer {
            id: f.u32()?,
            generation: f.u64()?,
            capacity: f.u64()?,
            shards: f.u32()?,
            flags: f.u32()?,
            name: f.text()?,
        },
        frame_type::RESUME => {
            let id = f.u32()?;
            let generation = f.u64()?;
            let answer = match f.u8()? {
                1 => {
                    let shards = f.u32()?;
                    if shards == 0 || shards > MAX_SHARDS {
                        return Err(WireError::Invalid(format!(
                            "RESUME for {shards} shards (1..={MAX_SHARDS})"
                        )));
                    }
                    let next_seq = (0..shards).map(|_| f.u64()).collect::<Result<_, _>>()?;
                    ResumeAnswer::Accept { next_seq }
                }
                0 => ResumeAnswer::Refuse { reason: f.text()? },
                other => return Err(WireError::Invalid(format!("RESUME answer {other} is neither 0 nor 1"))),
            };
            Control::Resume { id, generation, answer }
        }
        frame_type::ACK => {
            Control::Ack { id: f.u32()?, generation: f.u64()?, shard: f.u32()?, next_seq: f.u64()? }
        }
        frame_type::END => Control::End { id: f.u32()?, generation: f.u64()? },
        frame_type::PING => Control::Ping { sent_ns: f.u64()? },
        frame_type::PONG => Control::Pong { sent_ns: f.u64()? },
        frame_type::CLOSE => Control::Close { reason: f.text()? },
        other => return Err(WireError::UnknownType(other)),
    };
    if !f.bytes.is_empty() {
        return Err(WireError::Invalid(format!(
            "frame of type {frame_type} has {} bytes after its fields",
            f.bytes.len()
        )));
    }
    Ok(control)
}

/// A cursor over a frame body that fails, never panics, when it runs out.
struct Fields<'a> {
    bytes: &'a [u8],
    frame_type: u8,
    len: u32,
}

impl<'a> Fields<'a> {
    fn short(&self) -> WireError {
        WireError::TooShort { frame_type: self.frame_type, len: self.len }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| self.short())?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| self.short())?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| self.short())?))
    }

    fn text(&mut self) -> Result<String, WireError> {
        let len = self.u16()? as usize;
        if len > MAX_TEXT {
            return Err(WireError::Invalid(format!("text of {len} bytes (at most {MAX_TEXT})")));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Invalid("text is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_control() -> Vec<Control> {
        vec![
            Control::Hello { lossy: true, window: 1 << 20, name: "a→b".into() },
            Control::Offer {
                id: 7,
                generation: 0x0102,
                capacity: 1 << 16,
                shards: 2,
                flags: 1,
                name: "x/y".into(),
            },
            Control::Resume { id: 7, generation: 3, answer: ResumeAnswer::Accept { next_seq: vec![5, 0] } },
            Control::Resume { id: 7, generation: 3, answer: ResumeAnswer::Refuse { reason: "no".into() } },
            Control::Ack { id: 1, generation: 2, shard: 3, next_seq: 4 },
            Control::End { id: 1, generation: 2 },
            Control::Ping { sent_ns: 9 },
            Control::Pong { sent_ns: 9 },
            Control::Close { reason: "bye".into() },
        ]
    }

    #[test]
    fn every_frame_reads_back_as_written() {
        let mut wire = Vec::new();
        for control in every_control() {
            put_control(&mut wire, &control);
        }
        put_record(&mut wire, 4, 1, 6, 99, 12345, b"payload");
        let mut stream = wire.as_slice();
        let mut scratch = Vec::new();
        for control in every_control() {
            match read_frame(&mut stream, &mut scratch).unwrap() {
                Incoming::Control(got) => assert_eq!(got, control),
                other => panic!("{other:?}"),
            }
        }
        match read_frame(&mut stream, &mut scratch).unwrap() {
            Incoming::Record(h) => {
                let expected =
                    RecordHeader { id: 4, shard: 1, kind: 6, seq: 99, timestamp_ns: 12345, payload_len: 7 };
                assert_eq!(h, expected);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stream, b"payload");
    }

    #[test]
    fn hostile_frames_are_errors_without_allocation_by_their_length() {
        let mut scratch = Vec::new();
        // A control frame claiming 4 GiB: refused before reading or allocating.
        let huge = [0xff, 0xff, 0xff, 0xff, frame_type::OFFER];
        assert!(matches!(read_frame(&mut &huge[..], &mut scratch), Err(WireError::TooLong { .. })));
        assert!(scratch.capacity() < 1024);
        let huge_record = [0xff, 0xff, 0xff, 0xff, frame_type::RECORD];
        assert!(matches!(read_frame(&mut &huge_record[..], &mut scratch), Err(WireError::TooLong { .. })));
        // Every truncation of every frame is an error, never a panic.
        for control in every_control() {
            let mut wire = Vec::new();
            put_control(&mut wire, &control);
            for cut in 0..wire.len() {
                assert!(read_frame(&mut &wire[..cut], &mut scratch).is_err(), "{control:?} cut at {cut}");
                // The same bytes with a length that agrees with the cut.
                if cut > 5 {
                    let mut short = wire[..cut].to_vec();
                    short[..4].copy_from_slice(&((cut - 4) as u32).to_le_bytes());
                    assert!(read_frame(&mut short.as_slice(), &mut scratch).is_err(), "{control:?} at {cut}");
                }
            }
        }
        // Unknown type, bad magic, bad version, a RESUME of 1000 shards.
        let mut wire = Vec::new();
        put_control(&mut wire, &Control::Ping { sent_ns: 1 });
        wire[4] = 200;
        assert!(matches!(read_frame(&mut wire.as_slice(), &mut scratch), Err(WireError::UnknownType(200))));
        let mut wire = Vec::new();
        put_control(&mut wire, &Control::Hello { lossy: false, window: 1, name: String::new() });
        wire[5] = b'X';
        assert!(matches!(read_frame(&mut wire.as_slice(), &mut scratch), Err(WireError::BadMagic(_))));
        let mut wire = Vec::new();
        put_control(&mut wire, &Control::Hello { lossy: false, window: 1, name: String::new() });
        wire[13] = 9;
        assert!(matches!(read_frame(&mut wire.as_slice(), &mut scratch), Err(WireError::BadVersion(9))));
        let mut wire = Vec::new();
        let answer = ResumeAnswer::Accept { next_seq: vec![0] };
        put_control(&mut wire, &Control::Resume { id: 1, generation: 1, answer });
        wire[17..21].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(read_frame(&mut wire.as_slice(), &mut scratch), Err(WireError::Invalid(_))));
    }
}
