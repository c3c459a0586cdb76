//! Reading a log file back: the packets of its connection topics, in file
//! order (each connection's packets in the order they were received).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Context;
use mcap::Message;
use mcap::sans_io::LinearReaderOptions;

use super::mcap_writer::{PACKET_ENCODING, is_connection_topic};

/// Largest record read: far above what the logger writes (chunks of a few
/// MiB; a packet fits in half a stage's ring, 32 MiB by default), and a
/// bound on what a corrupt length field can make the reader allocate.
const RECORD_LIMIT: usize = 1 << 30;

/// The packet messages of a log file, streamed: memory stays bounded by the
/// largest chunk.
pub struct ConnectionMessages {
    messages: mcap::io::MessageReader<BufReader<File>>,
    path: PathBuf,
    /// Whether messages of other topics (events, stats) come too.
    every_topic: bool,
}

/// Opens the log file at `path`.
pub fn connection_messages(path: &Path) -> anyhow::Result<ConnectionMessages> {
    let mut messages = log_messages(path)?;
    messages.every_topic = false;
    Ok(messages)
}

/// Opens the log file at `path` for every message, whatever its topic.
pub fn log_messages(path: &Path) -> anyhow::Result<ConnectionMessages> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let options =
        LinearReaderOptions::default().with_validate_chunk_crcs(true).with_record_length_limit(RECORD_LIMIT);
    let messages = mcap::io::MessageReader::new_with_options(BufReader::new(file), options);
    Ok(ConnectionMessages { messages, path: path.to_owned(), every_topic: true })
}

impl Iterator for ConnectionMessages {
    /// A packet, on its connection's channel (topic and metadata). After an
    /// error (a damaged or truncated file), nothing more.
    type Item = anyhow::Result<Message<'static>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.messages.next()? {
                Ok(message)
                    if self.every_topic
                        || message.channel.message_encoding == PACKET_ENCODING
                            && is_connection_topic(&message.channel.topic) =>
                {
                    return Some(Ok(message));
                }
                Ok(_) => {}
                Err(e) => {
                    let path = self.path.display();
                    return Some(Err(
                        anyhow::Error::new(e).context(format!("{path} is not a valid MCAP log"))
                    ));
                }
            }
        }
    }
}
