//! SIGINT and SIGTERM as requests to stop gracefully, for commands that
//! must finish their work (end channels, detach readers) before exiting.

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Catches SIGINT and SIGTERM from its creation on (they no longer kill
/// the process) until it is dropped.
#[derive(Debug)]
pub struct StopSignals(Signals);

impl StopSignals {
    pub fn install() -> anyhow::Result<Self> {
        Signals::new([SIGINT, SIGTERM]).map(Self).context("installing handlers for SIGINT and SIGTERM")
    }

    /// The name of a stop signal received since the last call, if any.
    /// Never blocks.
    pub fn received(&mut self) -> Option<&'static str> {
        self.0.pending().next().map(name)
    }

    /// Blocks until a stop signal arrives; returns its name.
    pub fn wait(&mut self) -> &'static str {
        self.0.forever().next().map_or("a signal", name)
    }
}

fn name(signal: i32) -> &'static str {
    if signal == SIGINT { "SIGINT" } else { "SIGTERM" }
}
