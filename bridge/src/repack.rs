//! Packet groups without their receive slots' unused ends, for the wire.
//!
//! The io_uring receive path lets the kernel write each packet at the start
//! of a fixed-size slot of the ring, so its groups (TCP version 2, and UDP
//! groups whose `size` exceeds their datagram) carry each slot's unused end:
//! stale ring bytes, often most of the record (a 200-byte packet in a
//! 64 KiB slot). The exporter re-packs such a group compactly (TCP version
//! 1; UDP with `data_offset` 80 and `size` = 80 + align8(len)): the same
//! packets, metadata and bytes, zero padding, and nothing stale crosses the
//! network (engine/RECORDS.md §2, §8 say both layouts mean the same).

use engine::records::{
    self, DATAGRAM_HEADER_LEN, DatagramGroupWriter, GROUP_HEADER_LEN, GROUP_VERSION_SLOTTED, GroupWriter,
    KIND_DATAGRAM_GROUP, KIND_PACKET_GROUP, PACKET_HEADER_LEN,
};

/// The suffix of a stage's packet channel: only there do kinds 1 and 6
/// mean packet groups (another channel may use the numbers otherwise).
const PACKET_CHANNEL_SUFFIX: &str = "/packet_group";

/// The compact form of record `payload` of `kind` on `channel`, written
/// into `buf`, when it is a packet group that carries slot padding. `None`:
/// send the record as it is (not a packet group, compact already, or not
/// decodable: the bridge forwards what it cannot read unchanged).
pub(crate) fn compact<'b>(
    channel: &str,
    kind: u16,
    payload: &[u8],
    buf: &'b mut Vec<u8>,
) -> Option<&'b [u8]> {
    if !channel.ends_with(PACKET_CHANNEL_SUFFIX) {
        return None;
    }
    match kind {
        KIND_PACKET_GROUP => compact_tcp(payload, buf),
        KIND_DATAGRAM_GROUP => compact_udp(payload, buf),
        _ => None,
    }
}

fn compact_tcp<'b>(payload: &[u8], buf: &'b mut Vec<u8>) -> Option<&'b [u8]> {
    if payload.first() != Some(&GROUP_VERSION_SLOTTED) {
        return None;
    }
    let packets = records::decode_group(payload).ok()?;
    let len = GROUP_HEADER_LEN
        + packets.clone().map(|p| PACKET_HEADER_LEN + p.data.len().next_multiple_of(8)).sum::<usize>();
    buf.clear();
    buf.resize(len, 0);
    let mut group = GroupWriter::new();
    for packet in packets {
        group.packet_space(buf)[..packet.data.len()].copy_from_slice(packet.data);
        group.commit_packet(buf, &packet.meta, packet.data.len());
    }
    let len = group.close(buf);
    Some(&buf[..len])
}

fn compact_udp<'b>(payload: &[u8], buf: &'b mut Vec<u8>) -> Option<&'b [u8]> {
    let datagrams = records::decode_datagram_group(payload).ok()?;
    let len = GROUP_HEADER_LEN
        + datagrams.clone().map(|d| DATAGRAM_HEADER_LEN + d.data.len().next_multiple_of(8)).sum::<usize>();
    if len == payload.len() {
        return None; // every datagram right after its header already
    }
    buf.clear();
    buf.resize(len, 0);
    let mut group = DatagramGroupWriter::new();
    for datagram in datagrams {
        group.datagram_space(buf)[..datagram.data.len()].copy_from_slice(datagram.data);
        group.commit_datagram(buf, &datagram.meta, datagram.data.len());
    }
    let len = group.close(buf);
    Some(&buf[..len])
}
