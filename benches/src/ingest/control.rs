//! How the orchestrator (`bench-ingest`) drives a receiver process: one
//! command per line on the receiver's standard input, one JSON line per
//! answer on its standard output.
//!
//! - first, unasked, the receiver prints [`Hello`] once it can take load;
//! - `totals` → [`super::results::ReceiverTotals`];
//! - `final` → [`super::results::ReceiverReport`];
//! - `quit`, or the end of standard input → the receiver exits.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// A command to a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Totals,
    Final,
    Quit,
}

impl Command {
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            "totals" => Some(Self::Totals),
            "final" => Some(Self::Final),
            "quit" => Some(Self::Quit),
            _ => None,
        }
    }
}

/// A receiver's first line: where it listens (the peers), or that it is
/// attached (ringest's consumer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub listening: Option<String>,
    pub ready: bool,
}

/// Reads commands from standard input on a thread of its own and hands
/// each to `deliver`; the end of input delivers [`Command::Quit`].
/// Unknown lines are reported on stderr and skipped.
pub fn read_commands(mut deliver: impl FnMut(Command) + Send + 'static) {
    std::thread::Builder::new()
        .name("commands".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match Command::parse(&line) {
                    Some(Command::Quit) => break,
                    Some(command) => deliver(command),
                    None => eprintln!("unknown command {line:?}"),
                }
            }
            deliver(Command::Quit);
        })
        .expect("cannot start the command thread");
}

/// Prints `value` as one JSON line on standard output, flushed.
pub fn answer<T: Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let line = serde_json::to_string(value).expect("answers serialize");
    // The orchestrator gone: nothing left to tell.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(Command::parse("totals\n"), Some(Command::Totals));
        assert_eq!(Command::parse(" final"), Some(Command::Final));
        assert_eq!(Command::parse("quit"), Some(Command::Quit));
        assert_eq!(Command::parse("x"), None);
    }
}
