//! Progress of a long-running command on stdout: on a terminal one line
//! redrawn in place a few times a second; otherwise (a file, a pipe, a
//! journal) a plain line a second, prefixed `progress:`. Every figure has
//! its label.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn on a terminal.
const REDRAW_EVERY: Duration = Duration::from_millis(250);
/// How often a line is printed when stdout is not a terminal.
const PRINT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    started: Instant,
    last: Cell<Instant>,
    /// Whether a redrawn line is on screen (and needs ending).
    drawn: Cell<bool>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Starts timing now; the first line comes after one period.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            terminal: std::io::stdout().is_terminal(),
            started: now,
            last: Cell::new(now),
            drawn: Cell::new(false),
        }
    }

    /// Shows `line()` (prefixed with the time elapsed) if it is time to.
    pub fn show(&self, line: impl FnOnce() -> String) {
        let every = if self.terminal { REDRAW_EVERY } else { PRINT_EVERY };
        if self.last.get().elapsed() < every {
            return;
        }
        self.last.set(Instant::now());
        let text = format!("{:.1} s elapsed, {}", self.started.elapsed().as_secs_f64(), line());
        let mut stdout = std::io::stdout().lock();
        // A failed progress write is not worth stopping the command for.
        let _ = if self.terminal {
            self.drawn.set(true);
            write!(stdout, "\r{text}\x1b[K")
        } else {
            writeln!(stdout, "progress: {text}")
        };
        let _ = stdout.flush();
    }

    /// Ends a redrawn line, so that what follows starts on a line of its own.
    pub fn clear(&self) {
        if self.drawn.replace(false) {
            println!();
        }
    }
}
