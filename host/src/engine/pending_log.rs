//! The lines a run has captured but not yet stored: they go into the store
//! with the next checkpoint, so that keeping a workflow's output costs no
//! commit of its own. Bounded, so that a guest printing in a loop between
//! two steps cannot exhaust the host's memory.

use std::collections::VecDeque;

use crate::store::{LOG_LINES_KEPT, LogLine, LogStream, now_millis};

/// Longer lines are cut to this many bytes (at a character boundary).
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// Captured lines waiting for the next checkpoint.
#[derive(Default)]
pub struct PendingLog {
    lines: VecDeque<LogLine>,
    /// Lines dropped, oldest first, since the last checkpoint.
    dropped: u64,
}

impl PendingLog {
    pub fn push(&mut self, mut line: LogLine) {
        if line.text.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !line.text.is_char_boundary(end) {
                end -= 1;
            }
            let cut = line.text.len() - end;
            line.text.truncate(end);
            line.text.push_str(&format!(" … ({cut} more bytes)"));
        }
        if self.lines.len() as i64 >= LOG_LINES_KEPT {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(line);
    }

    /// The lines to store now, with a note of any that were dropped.
    pub fn take(&mut self) -> Vec<LogLine> {
        let mut lines = Vec::with_capacity(self.lines.len() + 1);
        if self.dropped > 0 {
            lines.push(LogLine {
                at: self.lines.front().map_or_else(now_millis, |line| line.at),
                stream: LogStream::Stderr,
                step: None,
                text: format!(
                    "[durable-host: {} earlier lines dropped: at most {LOG_LINES_KEPT} are kept \
                     between two checkpoints]",
                    self.dropped
                ),
            });
            self.dropped = 0;
        }
        lines.extend(self.lines.drain(..));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            at: 1,
            stream: LogStream::Stdout,
            step: None,
            text: text.to_owned(),
        }
    }

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let mut log = PendingLog::default();
        log.push(line(&"é".repeat(MAX_LOG_LINE)));
        let taken = log.take();
        assert!(taken[0].text.len() < MAX_LOG_LINE + 40);
        assert!(
            taken[0]
                .text
                .ends_with(&format!("({} more bytes)", MAX_LOG_LINE))
        );
    }

    #[test]
    fn a_flood_keeps_the_newest_lines_and_says_how_many_were_dropped() {
        let mut log = PendingLog::default();
        for i in 0..LOG_LINES_KEPT + 5 {
            log.push(line(&i.to_string()));
        }
        let taken = log.take();
        assert_eq!(taken.len() as i64, LOG_LINES_KEPT + 1);
        assert!(
            taken[0].text.contains("5 earlier lines dropped"),
            "{}",
            taken[0].text
        );
        assert_eq!(taken[1].text, "5");
        assert_eq!(taken.last().unwrap().text, (LOG_LINES_KEPT + 4).to_string());
        assert!(log.take().is_empty());
    }
}
