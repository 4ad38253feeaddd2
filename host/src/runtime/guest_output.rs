//! The guest's stdout and stderr: cut into lines for the workflow's log
//! (handed to the run at its next host call, see [`GuestOutput::take_lines`]),
//! shown live on the host's stderr when asked (`run`, not `serve`), with the
//! tail of stderr kept so that a panic's message and the last lines printed
//! before a trap (an exception and its traceback) go into the recorded reason.
//!
//! Guest output never goes to the host's stdout, which belongs to the host's
//! own report (and to `--json`).

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::engine::{MAX_LOG_LINE, PendingLog};
use crate::store::{LogLine, LogStream, StepKey, now_millis};

/// How much of the guest's latest stderr is kept for failure messages.
const TAIL_BYTES: usize = 4096;

/// At most this many of stderr's last lines go into a failure's reason.
const REASON_LINES: usize = 12;

/// A sink for one stream of guest output; clones and [`Self::stderr`]
/// share what was captured.
#[derive(Clone)]
pub struct GuestOutput {
    captured: Arc<Mutex<Captured>>,
    stream: LogStream,
    echo: bool,
}

#[derive(Default)]
struct Captured {
    /// The last [`TAIL_BYTES`] of stderr.
    tail: Vec<u8>,
    /// The unfinished last line of stdout and of stderr.
    partial: [Vec<u8>; 2],
    lines: PendingLog,
}

impl Captured {
    fn end_line(&mut self, stream: LogStream) {
        let partial = std::mem::take(&mut self.partial[stream_index(stream)]);
        let text = String::from_utf8_lossy(&partial);
        self.lines.push(LogLine {
            at: now_millis(),
            stream,
            step: None,
            text: text.strip_suffix('\r').unwrap_or(&text).to_owned(),
        });
    }
}

fn stream_index(stream: LogStream) -> usize {
    usize::from(stream != LogStream::Stdout)
}

impl GuestOutput {
    /// The guest's stdout; `echo` also copies everything to the host's stderr.
    pub fn new(echo: bool) -> Self {
        Self {
            captured: Arc::default(),
            stream: LogStream::Stdout,
            echo,
        }
    }

    /// The guest's stderr, captured alongside this stdout.
    pub fn stderr(&self) -> Self {
        Self {
            stream: LogStream::Stderr,
            ..self.clone()
        }
    }

    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let mut captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        if self.stream == LogStream::Stderr {
            captured.tail.extend_from_slice(bytes);
            let excess = captured.tail.len().saturating_sub(TAIL_BYTES);
            captured.tail.drain(..excess);
        }
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let (text, ends) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            captured.partial[stream_index(self.stream)].extend_from_slice(text);
            // A line that never ends is cut where the log would cut it.
            if ends || captured.partial[stream_index(self.stream)].len() > MAX_LOG_LINE {
                captured.end_line(self.stream);
            }
        }
        drop(captured);
        // The echo is a courtesy to whoever watches: a reader of the
        // host's stderr that went away must not fail the guest's write.
        if self.echo {
            let _ = io::stderr().write_all(bytes);
        }
        Ok(())
    }

    /// A whole line the host writes about the guest (a request it made),
    /// with the step it belongs to when known.
    pub fn record(&self, stream: LogStream, step: Option<StepKey>, text: String) {
        if self.echo {
            let _ = writeln!(io::stderr(), "[{stream}] {text}");
        }
        let mut captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        captured.lines.push(LogLine {
            at: now_millis(),
            stream,
            step,
            text,
        });
    }

    /// The complete lines written since the last call; with `finish`, the
    /// unfinished last lines too (the guest will write no more).
    pub fn take_lines(&self, finish: bool) -> Vec<LogLine> {
        let mut captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        if finish {
            for stream in [LogStream::Stdout, LogStream::Stderr] {
                if !captured.partial[stream_index(stream)].is_empty() {
                    captured.end_line(stream);
                }
            }
        }
        captured.lines.take()
    }

    /// What stderr says about how the guest died: the message of the last
    /// Rust panic it printed, if any, and the last lines before it (all of
    /// the last lines without a panic), where a JavaScript exception or a
    /// Python traceback goes.
    pub fn last_words(&self) -> LastWords {
        let captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&captured.tail);
        let (before, panic) = match text.rfind("panicked at ") {
            Some(start) => {
                let message = text[start..]
                    .lines()
                    .filter(|line| !line.starts_with("note: "))
                    .collect::<Vec<_>>()
                    .join(" ");
                // The panic's own line begins `thread '...' panicked at`.
                let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
                (&text[..line_start], Some(message.trim().to_owned()))
            }
            None => (&text[..], None),
        };
        let lines: Vec<&str> = before
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        let stderr = lines[lines.len().saturating_sub(REASON_LINES)..]
            .iter()
            .map(|line| (*line).to_owned())
            .collect();
        LastWords { panic, stderr }
    }
}

/// The end of a guest's stderr, for the reason a failure is recorded with.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LastWords {
    /// The message of the last Rust panic.
    pub panic: Option<String>,
    /// The last lines (at most a dozen) before that panic, or before the end.
    pub stderr: Vec<String>,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes).map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(GuestOutput::write(&self, buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_panic_without_the_note_and_the_lines_before_it() {
        let out = GuestOutput::new(false).stderr();
        out.write(
            b"Traceback (most recent call last):\n  File \"app.py\", line 3\n\nValueError: no\n",
        )
        .unwrap();
        out.write(b"thread '<unnamed>' panicked at src/lib.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n")
            .unwrap();
        assert_eq!(
            out.last_words(),
            LastWords {
                panic: Some("panicked at src/lib.rs:3:5: boom".to_owned()),
                stderr: vec![
                    "Traceback (most recent call last):".to_owned(),
                    "File \"app.py\", line 3".to_owned(),
                    "ValueError: no".to_owned(),
                ],
            }
        );
    }

    #[test]
    fn without_a_panic_the_last_lines_of_stderr_alone() {
        let out = GuestOutput::new(false);
        out.write(b"stdout is not evidence\n").unwrap();
        let err = out.stderr();
        for i in 0..20 {
            err.write(format!("line {i}\n").as_bytes()).unwrap();
        }
        err.write(b"Error: declined").unwrap();
        let words = out.last_words();
        assert_eq!(words.panic, None);
        assert_eq!(words.stderr.len(), REASON_LINES);
        assert_eq!(words.stderr[0], "line 9");
        assert_eq!(words.stderr.last().unwrap(), "Error: declined");
    }

    #[test]
    fn tail_is_bounded_and_holds_stderr_only() {
        let out = GuestOutput::new(false);
        out.write(b"stdout\n").unwrap();
        assert!(out.captured.lock().unwrap().tail.is_empty());
        out.stderr().write(&vec![b'x'; TAIL_BYTES * 3]).unwrap();
        assert_eq!(out.captured.lock().unwrap().tail.len(), TAIL_BYTES);
    }

    #[test]
    fn output_is_cut_into_lines_per_stream() {
        let out = GuestOutput::new(false);
        let err = out.stderr();
        out.write(b"one\ntw").unwrap();
        err.write(b"oops\r\n").unwrap();
        out.write(b"o\nthree").unwrap();
        let lines = |taken: Vec<LogLine>| -> Vec<(LogStream, String)> {
            taken.into_iter().map(|l| (l.stream, l.text)).collect()
        };
        assert_eq!(
            lines(out.take_lines(false)),
            [
                (LogStream::Stdout, "one".to_owned()),
                (LogStream::Stderr, "oops".to_owned()),
                (LogStream::Stdout, "two".to_owned()),
            ]
        );
        // The unfinished line waits for its end, or for the guest's.
        assert!(out.take_lines(false).is_empty());
        assert_eq!(
            lines(out.take_lines(true)),
            [(LogStream::Stdout, "three".to_owned())]
        );
    }
}
