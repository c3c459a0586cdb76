//! Connection events and socket statistics as JSON (in log files and
//! `ringest tail --json`), with the JSON schemas the log file declares for
//! them: Foxglove shows these messages and plots their numbers (e.g.
//! `stage.traffic.bytes_received_per_s`).
//!
//! Times stay integers in ns, as in the records: exact for every reader but
//! JavaScript, which rounds them to about 0.25 µs.

use std::net::SocketAddr;

use engine::records::{
    ConnectionEvent, DisconnectReason, ReceivePath, SocketStats, TrafficStats, UdpSocketCounters,
    UdpSocketStats,
};
use serde_json::{Value, json};

/// Schema name of [`connection_event`] messages.
pub const CONNECTION_EVENT_SCHEMA_NAME: &str = "ringest.ConnectionEvent";
/// Schema name of [`socket_stats`] messages.
pub const SOCKET_STATS_SCHEMA_NAME: &str = "ringest.SocketStats";
/// Schema name of [`udp_socket_stats`] messages.
pub const UDP_SOCKET_STATS_SCHEMA_NAME: &str = "ringest.UdpSocketStats";

pub fn connection_event(event: &ConnectionEvent) -> Value {
    match event {
        ConnectionEvent::Connected { connection_id, time_ns, peer, local } => json!({
            "event": "connected",
            "connection_id": connection_id,
            "time_ns": time_ns,
            "peer": SocketAddr::from(*peer).to_string(),
            "local": SocketAddr::from(*local).to_string(),
        }),
        ConnectionEvent::Disconnected { connection_id, time_ns, bytes_in, bytes_out, reason } => {
            let mut value = json!({
                "event": "disconnected",
                "connection_id": connection_id,
                "time_ns": time_ns,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "reason": reason_name(reason),
            });
            if let DisconnectReason::Error(text) = reason {
                value["error"] = json!(text);
            }
            value
        }
    }
}

pub fn reason_name(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::PeerClosed => "peer_closed",
        DisconnectReason::ReceiveTimeout => "receive_timeout",
        DisconnectReason::Error(_) => "error",
        DisconnectReason::Rejected => "rejected",
        DisconnectReason::Shutdown => "shutdown",
    }
}

pub fn socket_stats(stats: &SocketStats) -> Value {
    let stage = &stats.stage;
    let connections: Vec<Value> = stats
        .connections
        .iter()
        .map(|c| {
            json!({
                "connection_id": c.connection_id,
                "peer": SocketAddr::from(c.peer).to_string(),
                "traffic": traffic(&c.traffic),
            })
        })
        .collect();
    json!({
        "time_ns": stats.time_ns,
        "interval_ns": stats.interval_ns,
        "receive_path": receive_path(stats.receive_path),
        "stage": {
            "open_connections": stage.open_connections,
            "rejected_connections": stage.rejected_connections,
            "groups_published": stage.groups_published,
            "backpressure_stalls": stage.backpressure_stalls,
            "receive_buffer_exhaustions": stage.receive_buffer_exhaustions,
            "bind_failures": stage.bind_failures,
            "traffic": traffic(&stage.traffic),
        },
        "connections": connections,
    })
}

fn receive_path(path: ReceivePath) -> &'static str {
    match path {
        ReceivePath::GlommioRead => "glommio_read",
        ReceivePath::IoUringMultishot => "io_uring_multishot",
    }
}

/// A UDP stage's statistics: every socket's counters and their total.
pub fn udp_socket_stats(stats: &UdpSocketStats) -> Value {
    json!({
        "time_ns": stats.time_ns,
        "interval_ns": stats.interval_ns,
        "receive_path": receive_path(stats.receive_path),
        "groups_published": stats.groups_published,
        "total": udp_counters(&stats.total(), false),
        "sockets": stats.sockets.iter().map(|s| udp_counters(s, true)).collect::<Vec<_>>(),
    })
}

/// One socket's counters; `socket` adds which socket (not in the total).
fn udp_counters(c: &UdpSocketCounters, socket: bool) -> Value {
    let mut value = json!({
        "datagrams": c.datagrams,
        "bytes": c.bytes,
        "datagrams_per_s": c.datagrams_per_s,
        "bytes_per_s": c.bytes_per_s,
        "kernel_drops": c.kernel_drops,
        "truncated": c.truncated,
        "ring_full_stalls": c.ring_full_stalls,
        "max_datagram_size": c.max_datagram_size,
        "egress_sent": c.egress_sent,
        "egress_drops": c.egress_drops,
        "kernel_receive_buffer_b": c.kernel_receive_buffer_b,
    });
    if socket {
        value["executor"] = json!(c.executor);
        value["local"] = json!(SocketAddr::from(c.local).to_string());
    }
    value
}

fn traffic(t: &TrafficStats) -> Value {
    json!({
        "bytes_received": t.bytes_received,
        "packets_received": t.packets_received,
        "bytes_sent": t.bytes_sent,
        "packets_sent": t.packets_sent,
        "bytes_received_per_s": t.bytes_received_per_s,
        "packets_received_per_s": t.packets_received_per_s,
        "bytes_sent_per_s": t.bytes_sent_per_s,
        "packets_sent_per_s": t.packets_sent_per_s,
        "mean_packet_size": t.mean_packet_size,
        "max_packet_size": t.max_packet_size,
        "egress_drops": t.egress_drops,
    })
}

/// The JSON schema of [`connection_event`] messages.
pub fn connection_event_schema() -> Value {
    json!({
        "title": CONNECTION_EVENT_SCHEMA_NAME,
        "description": "A TCP connection of a ringest stage opened or closed",
        "type": "object",
        "properties": {
            "event": { "type": "string", "enum": ["connected", "disconnected"] },
            "connection_id": { "type": "integer" },
            "time_ns": { "type": "integer", "description": "CLOCK_REALTIME, ns since the Unix epoch" },
            "peer": { "type": "string", "description": "remote address (connected)" },
            "local": { "type": "string", "description": "local address (connected)" },
            "bytes_in": { "type": "integer", "description": "bytes received (disconnected)" },
            "bytes_out": { "type": "integer", "description": "bytes sent (disconnected)" },
            "reason": {
                "type": "string",
                "enum": ["peer_closed", "receive_timeout", "error", "rejected", "shutdown"],
            },
            "error": { "type": "string", "description": "socket error text (reason error)" },
        },
        "required": ["event", "connection_id", "time_ns"],
    })
}

/// The JSON schema of [`socket_stats`] messages.
pub fn socket_stats_schema() -> Value {
    let integer = json!({ "type": "integer" });
    let traffic = json!({
        "type": "object",
        "properties": {
            "bytes_received": integer,
            "packets_received": integer,
            "bytes_sent": integer,
            "packets_sent": integer,
            "bytes_received_per_s": { "type": "number" },
            "packets_received_per_s": { "type": "number" },
            "bytes_sent_per_s": { "type": "number" },
            "packets_sent_per_s": { "type": "number" },
            "mean_packet_size": { "type": "number" },
            "max_packet_size": integer,
            "egress_drops": integer,
        },
    });
    json!({
        "title": SOCKET_STATS_SCHEMA_NAME,
        "description": "A ringest stage's socket statistics, once a second; rates cover interval_ns",
        "type": "object",
        "properties": {
            "time_ns": integer,
            "interval_ns": integer,
            "receive_path": { "type": "string", "enum": ["glommio_read", "io_uring_multishot"] },
            "stage": {
                "type": "object",
                "properties": {
                    "open_connections": integer,
                    "rejected_connections": integer,
                    "groups_published": integer,
                    "backpressure_stalls": integer,
                    "receive_buffer_exhaustions": integer,
                    "bind_failures": integer,
                    "traffic": traffic,
                },
            },
            "connections": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "connection_id": integer,
                        "peer": { "type": "string" },
                        "traffic": traffic,
                    },
                },
            },
        },
        "required": ["time_ns", "interval_ns", "stage", "connections"],
    })
}

/// The JSON schema of [`udp_socket_stats`] messages.
pub fn udp_socket_stats_schema() -> Value {
    let integer = json!({ "type": "integer" });
    let number = json!({ "type": "number" });
    let counters = |socket: bool| {
        let mut properties = json!({
            "datagrams": { "type": "integer", "description": "received, truncated ones included" },
            "bytes": { "type": "integer", "description": "data bytes received (of truncated datagrams, those kept)" },
            "datagrams_per_s": number,
            "bytes_per_s": number,
            "kernel_drops": { "type": "integer", "description": "dropped by the kernel, socket buffer full (SO_RXQ_OVFL)" },
            "truncated": { "type": "integer", "description": "longer than max_datagram_size_b, kept cut" },
            "ring_full_stalls": { "type": "integer", "description": "pauses while a lossless reader held the ring full" },
            "max_datagram_size": { "type": "integer", "description": "largest datagram of the interval" },
            "egress_sent": integer,
            "egress_drops": integer,
            "kernel_receive_buffer_b": integer,
        });
        if socket {
            properties["executor"] = integer.clone();
            properties["local"] =
                json!({ "type": "string", "description": "address the socket is bound to" });
        }
        json!({ "type": "object", "properties": properties })
    };
    json!({
        "title": UDP_SOCKET_STATS_SCHEMA_NAME,
        "description": "A ringest UDP stage's socket statistics, once a second; totals since the stage started, rates over interval_ns",
        "type": "object",
        "properties": {
            "time_ns": integer,
            "interval_ns": integer,
            "receive_path": { "type": "string", "enum": ["glommio_read", "io_uring_multishot"] },
            "groups_published": integer,
            "total": counters(false),
            "sockets": { "type": "array", "items": counters(true) },
        },
        "required": ["time_ns", "interval_ns", "total", "sockets"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::records::{ConnectionStats, StageStats};

    #[test]
    fn events_render_their_fields() {
        let peer: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "[::1]:7400".parse().unwrap();
        let connected = ConnectionEvent::Connected {
            connection_id: 3,
            time_ns: 5,
            peer: peer.into(),
            local: local.into(),
        };
        assert_eq!(
            connection_event(&connected),
            json!({"event": "connected", "connection_id": 3, "time_ns": 5,
                   "peer": "10.0.0.1:40000", "local": "[::1]:7400"})
        );
        let disconnected = ConnectionEvent::Disconnected {
            connection_id: 3,
            time_ns: 6,
            bytes_in: 7,
            bytes_out: 8,
            reason: DisconnectReason::Error("reset".into()),
        };
        let value = connection_event(&disconnected);
        assert_eq!(value["reason"], "error");
        assert_eq!(value["error"], "reset");
        assert_eq!(value["bytes_in"], 7);
    }

    #[test]
    fn stats_render_nested_traffic() {
        let traffic = TrafficStats { bytes_received: 9, bytes_received_per_s: 1.5, ..Default::default() };
        let stats = SocketStats {
            time_ns: 1,
            interval_ns: 2,
            receive_path: ReceivePath::IoUringMultishot,
            stage: StageStats { open_connections: 1, traffic, ..Default::default() },
            connections: vec![ConnectionStats {
                connection_id: 4,
                peer: "127.0.0.1:9".parse::<SocketAddr>().unwrap().into(),
                traffic,
            }],
        };
        let value = socket_stats(&stats);
        assert_eq!(value["receive_path"], "io_uring_multishot");
        assert_eq!(value["stage"]["traffic"]["bytes_received_per_s"], 1.5);
        assert_eq!(value["connections"][0]["peer"], "127.0.0.1:9");
        // Every field rendered is declared in the schema.
        let schema = socket_stats_schema();
        for key in value["stage"]["traffic"].as_object().unwrap().keys() {
            assert!(schema["properties"]["stage"]["properties"]["traffic"]["properties"].get(key).is_some());
        }
    }

    #[test]
    fn udp_stats_render_every_socket_and_the_total() {
        let socket = UdpSocketCounters {
            executor: 1,
            local: "0.0.0.0:2368".parse::<SocketAddr>().unwrap().into(),
            datagrams: 5,
            kernel_drops: 2,
            truncated: 1,
            ..Default::default()
        };
        let stats = UdpSocketStats {
            time_ns: 1,
            interval_ns: 2,
            receive_path: ReceivePath::GlommioRead,
            groups_published: 3,
            sockets: vec![socket, UdpSocketCounters { executor: 2, ..socket }],
        };
        let value = udp_socket_stats(&stats);
        assert_eq!(value["total"]["datagrams"], 10);
        assert_eq!(value["total"]["kernel_drops"], 4);
        assert_eq!(value["sockets"][1]["executor"], 2);
        assert_eq!(value["sockets"][0]["local"], "0.0.0.0:2368");
        let schema = udp_socket_stats_schema();
        for key in value["sockets"][0].as_object().unwrap().keys() {
            assert!(schema["properties"]["sockets"]["items"]["properties"].get(key).is_some(), "{key}");
        }
        for key in value.as_object().unwrap().keys() {
            assert!(schema["properties"].get(key).is_some(), "{key}");
        }
    }
}
