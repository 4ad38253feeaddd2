//! The guest's stdout and stderr: shown live on the host's stderr, with the
//! tail kept so that a panic's message can be recorded as the failure reason.
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

/// How much of the guest's latest output is kept for failure messages.
const TAIL_BYTES: usize = 4096;

/// A sink for guest output; clones share the same tail.
#[derive(Clone)]
pub struct GuestOutput {
    tail: Arc<Mutex<Vec<u8>>>,
    echo: fn(&[u8]) -> io::Result<()>,
}

impl Default for GuestOutput {
    fn default() -> Self {
        Self {
            tail: Arc::default(),
            echo: |bytes| io::stderr().write_all(bytes),
        }
    }
}

impl GuestOutput {
    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend_from_slice(bytes);
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
        drop(tail);
        (self.echo)(bytes)
    }

    /// The message of the last Rust panic the guest printed, if any.
    pub fn panic_message(&self) -> Option<String> {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&tail);
        let start = text.rfind("panicked at ")?;
        let message = text[start..]
            .lines()
            .filter(|line| !line.starts_with("note: "))
            .collect::<Vec<_>>()
            .join(" ");
        Some(message.trim().to_owned())
    }
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

    fn silent() -> GuestOutput {
        GuestOutput {
            echo: |_| Ok(()),
            ..GuestOutput::default()
        }
    }

    #[test]
    fn panic_message_is_the_last_panic_without_the_note() {
        let out = silent();
        out.write(b"hello\nthread '<unnamed>' panicked at src/lib.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n")
            .unwrap();
        assert_eq!(
            out.panic_message().as_deref(),
            Some("panicked at src/lib.rs:3:5: boom")
        );
    }

    #[test]
    fn tail_is_bounded() {
        let out = silent();
        out.write(&vec![b'x'; TAIL_BYTES * 3]).unwrap();
        assert_eq!(out.tail.lock().unwrap().len(), TAIL_BYTES);
    }
}
