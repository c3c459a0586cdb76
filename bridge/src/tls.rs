//! TLS for the link (rustls with the ring provider): the configurations
//! built from `[bridge.tls]`'s PEM files when the bridge starts, the
//! handshake (done on the bare socket before the link starts, within a
//! deadline), and the two halves the link reads and writes through.
//!
//! One rustls connection serves both halves of a link: each takes its lock
//! only to hand bytes to rustls or take them out, never while it waits on
//! the socket, so a blocked read does not hold up a write.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engine::config::BridgeTlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};

use crate::wire::{self, Control, MAGIC};

/// Plaintext and TLS bytes rustls may hold per direction: a write batch of
/// the link (256 KiB) is encrypted in a few turns.
const BUFFER_LIMIT: usize = 1 << 20;
/// Bytes of the socket read at once by the receiving half.
const RAW_READ: usize = 64 << 10;

/// What is wrong with `[bridge.tls]`'s files.
#[derive(Debug, thiserror::Error)]
#[error("tls.{key}: {reason}")]
pub struct TlsSetupError {
    /// The key whose file or value is at fault.
    pub key: &'static str,
    pub reason: String,
}

/// This side's TLS configuration.
#[derive(Clone)]
pub(crate) enum TlsSide {
    Server(Arc<ServerConfig>),
    Client { config: Arc<ClientConfig>, server_name: ServerName<'static> },
}

impl std::fmt::Debug for TlsSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Server(_) => f.write_str("TlsSide::Server"),
            Self::Client { server_name, .. } => write!(f, "TlsSide::Client({server_name:?})"),
        }
    }
}

fn setup_error(key: &'static str, reason: impl std::fmt::Display) -> TlsSetupError {
    TlsSetupError { key, reason: reason.to_string() }
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let found = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| setup_error(key, format!("{}: {e}", path.display())))?;
    if found.is_empty() {
        return Err(setup_error(key, format!("{}: no certificate", path.display())));
    }
    Ok(found)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| setup_error("key", format!("{}: {e}", path.display())))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("ca", path)? {
        roots.add(cert).map_err(|e| setup_error("ca", format!("{}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

impl TlsSide {
    /// Reads the files of `config` for a listening side, or for a side
    /// connecting to `connect` (`host:port`).
    pub(crate) fn new(
        config: &BridgeTlsConfig,
        listening: bool,
        connect: Option<&str>,
    ) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let own = match (&config.certificate, &config.key) {
            (Some(cert), Some(key)) => Some((certificates("certificate", cert)?, private_key(key)?)),
            _ => None,
        };
        let versions = |e: rustls::Error| setup_error("certificate", e);
        if listening {
            let Some((chain, key)) = own else {
                return Err(setup_error(
                    "certificate",
                    "required: a listening bridge presents its certificate",
                ));
            };
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(versions)?;
            let builder = match &config.ca {
                Some(ca) => {
                    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider);
                    let verifier =
                        if config.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
                    builder.with_client_cert_verifier(verifier.build().map_err(|e| setup_error("ca", e))?)
                }
                None => builder.with_no_client_auth(),
            };
            let server = builder
                .with_single_cert(chain, key)
                .map_err(|e| setup_error("key", format!("does not go with the certificate: {e}")))?;
            return Ok(Self::Server(Arc::new(server)));
        }
        let Some(ca) = &config.ca else {
            return Err(setup_error("ca", "required: a connecting bridge checks the peer's certificate"));
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_root_certificates(roots(ca)?);
        let client = match own {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| setup_error("key", format!("does not go with the certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        let name = match &config.server_name {
            Some(name) => name.clone(),
            None => host_of(connect.unwrap_or_default()).to_owned(),
        };
        let key = if config.server_name.is_some() { "server_name" } else { "ca" };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| setup_error(key, format!("{name:?} is no DNS name or IP address: {e}")))?;
        Ok(Self::Client { config: Arc::new(client), server_name })
    }

    fn connection(&self) -> Result<Connection, String> {
        let mut connection: Connection = match self {
            Self::Server(config) => rustls::ServerConnection::new(config.clone()).map(Connection::from),
            Self::Client { config, server_name } => {
                ClientConnection::new(config.clone(), server_name.clone()).map(Connection::from)
            }
        }
        .map_err(|e| format!("TLS: {e}"))?;
        connection.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(connection)
    }
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Why a handshake failed, for the log line of this side.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

/// Runs the TLS handshake on `stream` within `deadline`. A connecting side
/// also waits for the peer's first bytes of the link: under TLS 1.3 a
/// listener checks the client's certificate after the client finished its
/// handshake, and its refusal arrives only then.
pub(crate) fn handshake(
    side: &TlsSide,
    stream: &mut TcpStream,
    deadline: Duration,
) -> Result<Connection, Refused> {
    let refused = |why: String| Refused(why);
    let mut connection = side.connection().map_err(refused)?;
    let end = Instant::now() + deadline;
    let timeout = || end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(timeout())).map_err(|e| refused(e.to_string()))?;
    stream.set_write_timeout(Some(timeout())).map_err(|e| refused(e.to_string()))?;
    let describe = |e: io::Error| Refused(describe(&e, deadline));
    // The client speaks first (its hello); then the first bytes of the peer
    // tell a plaintext bridge from a TLS one.
    while connection.wants_write() {
        connection.write_tls(stream).map_err(describe)?;
    }
    if let Some(why) = plaintext_peer(stream, matches!(side, TlsSide::Server(_))) {
        return Err(refused(why));
    }
    while connection.is_handshaking() {
        stream.set_read_timeout(Some(timeout())).map_err(|e| refused(e.to_string()))?;
        connection.complete_io(stream).map_err(describe)?;
    }
    while connection.wants_write() {
        connection.write_tls(stream).map_err(describe)?;
    }
    if matches!(side, TlsSide::Client { .. }) {
        loop {
            let state = connection.process_new_packets().map_err(|e| describe(tls_error(e)))?;
            if state.plaintext_bytes_to_read() > 0 {
                break;
            }
            stream.set_read_timeout(Some(timeout())).map_err(|e| refused(e.to_string()))?;
            if connection.read_tls(stream).map_err(describe)? == 0 {
                return Err(refused("the peer closed the connection after the TLS handshake".into()));
            }
        }
    }
    Ok(connection)
}

/// Looks at the peer's first bytes without taking them: `Some(why)` when
/// they are not a TLS record (a plaintext bridge sends HELLO at once). A
/// listener tells a plaintext bridge, in plaintext, why it is refused.
fn plaintext_peer(stream: &mut TcpStream, listening: bool) -> Option<String> {
    let mut first = [0u8; 13];
    let n = match stream.peek(&mut first) {
        Ok(0) => return Some("the peer closed the connection before the TLS handshake".into()),
        Ok(n) => n,
        Err(_) => return None, // the handshake reports it
    };
    let first = &first[..n];
    if looks_like_tls(first) {
        return None;
    }
    if !looks_like_hello(first) {
        return Some(format!("the peer does not speak TLS (its first bytes: {first:02x?})"));
    }
    if listening {
        // Take its HELLO, answer CLOSE, and wait for it to go: closing on
        // unread bytes would reset the connection before the peer reads
        // why.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut sink = [0u8; 4096];
        let _ = stream.read(&mut sink);
        let mut close = Vec::new();
        wire::put_control(
            &mut close,
            &Control::Close {
                reason: "this bridge requires TLS: configure [bridge.tls] on both sides".into(),
            },
        );
        let _ = stream.write_all(&close);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        return Some("a bridge without TLS connected (plaintext HELLO): this side requires TLS".into());
    }
    Some("the peer is a bridge without TLS (plaintext HELLO): configure [bridge.tls] on both sides".into())
}

/// The start of a TLS record: handshake (22) or alert (21), version 3.x.
pub(crate) fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [21 | 22, 3, minor, ..] if *minor <= 4) || matches!(first, [21 | 22] | [21 | 22, 3])
}

/// The start of a plaintext bridge's HELLO frame (as far as it arrived).
fn looks_like_hello(first: &[u8]) -> bool {
    first.len() >= 5 && first[4] == wire::frame_type::HELLO && {
        let magic = &first[5..];
        MAGIC.starts_with(&magic[..magic.len().min(MAGIC.len())])
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// One line on why a handshake (or a TLS read) failed.
pub(crate) fn describe(e: &io::Error, deadline: Duration) -> String {
    use rustls::Error as E;
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("no TLS handshake from the peer within {} ms", deadline.as_millis())
            }
            io::ErrorKind::UnexpectedEof => "the peer closed the connection during the TLS handshake".into(),
            _ => format!("TLS handshake: {e}"),
        };
    };
    match tls {
        E::InvalidCertificate(why) => format!(
            "refused the peer's certificate ({why:?}): it is not signed by a CA of tls.ca, or not for this name"
        ),
        E::NoCertificatesPresented => {
            "the peer presented no certificate, and this side requires one (tls.require_client_cert)".into()
        }
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the peer requires a client certificate: set tls.certificate and tls.key".into()
        }
        E::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied),
        ) => format!(
            "the peer refused this side's certificate (TLS alert {alert:?}): its tls.ca does not trust it"
        ),
        E::AlertReceived(alert) => format!("the peer ended the TLS handshake (alert {alert:?})"),
        E::InvalidMessage(_) => format!("the peer does not speak TLS ({tls})"),
        other => format!("TLS: {other}"),
    }
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    connection.lock().unwrap_or_else(|e| e.into_inner())
}

/// Splits an established TLS connection into the link's two halves.
pub(crate) fn split(
    connection: Connection,
    incoming: TcpStream,
    outgoing: TcpStream,
) -> (TlsReader, TlsWriter) {
    let shared = Arc::new(Mutex::new(connection));
    let reader =
        TlsReader { connection: shared.clone(), socket: incoming, raw: vec![0; RAW_READ], start: 0, end: 0 };
    let writer = TlsWriter { connection: shared, socket: outgoing, encrypted: Vec::new() };
    (reader, writer)
}

/// The receiving half: plaintext of the peer's records.
pub(crate) struct TlsReader {
    connection: Arc<Mutex<Connection>>,
    socket: TcpStream,
    /// Bytes read from the socket that rustls has not taken yet.
    raw: Vec<u8>,
    start: usize,
    end: usize,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut connection = lock(&self.connection);
                match connection.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // No plaintext is waiting, so rustls takes more bytes.
                if self.start < self.end {
                    self.start += connection.read_tls(&mut &self.raw[self.start..self.end])?;
                    connection.process_new_packets().map_err(tls_error)?;
                    continue;
                }
            }
            let n = self.socket.read(&mut self.raw)?;
            (self.start, self.end) = (0, n);
            if n == 0 {
                let mut connection = lock(&self.connection);
                connection.read_tls(&mut &[][..])?;
                connection.process_new_packets().map_err(tls_error)?;
                return match connection.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    }
                    other => other,
                };
            }
        }
    }
}

/// The sending half: encrypts under the lock, writes to the socket without
/// it.
pub(crate) struct TlsWriter {
    connection: Arc<Mutex<Connection>>,
    socket: TcpStream,
    encrypted: Vec<u8>,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.encrypted.clear();
        let taken = {
            let mut connection = lock(&self.connection);
            let taken = connection.writer().write(buf)?;
            while connection.wants_write() {
                connection.write_tls(&mut self.encrypted)?;
            }
            taken
        };
        self.socket.write_all(&self.encrypted)?;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_tls_from_a_plaintext_hello() {
        let mut hello = Vec::new();
        wire::put_control(&mut hello, &Control::Hello { lossy: false, window: 1, name: "a".into() });
        for n in 5..hello.len() {
            assert!(looks_like_hello(&hello[..n]), "{n}");
            assert!(!looks_like_tls(&hello[..n]), "{n}");
        }
        assert!(looks_like_tls(&[22, 3, 1, 0, 200]));
        assert!(looks_like_tls(&[21, 3, 3, 0, 2]));
        assert!(!looks_like_tls(b"GET / HTTP/1.1"));
        assert!(!looks_like_hello(b"GET / HTTP/1.1"));
        assert_eq!(host_of("[::1]:7500"), "::1");
        assert_eq!(host_of("sensor-a.lan:7500"), "sensor-a.lan");
    }
}
