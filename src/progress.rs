//! Progress bars that also leave a trace in logs. indicatif draws nothing when stderr is not a
//! terminal (`nohup`, CI, `2> train.log`), which hides hour-long runs entirely; there a bar
//! writes its current line to stderr every [`LOG_INTERVAL`] instead.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How often a bar writes a line when stderr is not a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// A bar of `len` steps drawn with `template`, hidden unless `show`.
pub fn bar(len: u64, template: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = if io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        let lines = LogLines {
            every: LOG_INTERVAL,
            state: Mutex::new((None, String::new())),
        };
        ProgressBar::with_draw_target(
            Some(len),
            ProgressDrawTarget::term_like_with_hz(Box::new(lines), 1),
        )
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// A terminal stand-in that keeps the bar's latest text and writes it as one log line at most
/// every `every`.
#[derive(Debug)]
struct LogLines {
    every: Duration,
    /// When a line was last written, and the text drawn since.
    state: Mutex<(Option<Instant>, String)>,
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        160
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        if !s.trim().is_empty() {
            if let Ok(mut state) = self.state.lock() {
                state.1 = s.trim_end().to_string();
            }
        }
        Ok(())
    }
    fn clear_line(&self) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        let due = state.0.is_none_or(|t| t.elapsed() >= self.every);
        if due && !state.1.is_empty() {
            writeln!(io::stderr(), "{}", state.1)?;
            state.0 = Some(Instant::now());
            state.1.clear();
        }
        Ok(())
    }
}
