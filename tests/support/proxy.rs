//! A TCP proxy between the host and its PostgreSQL server that a test can
//! cut (every connection through it breaks, and new ones are turned away,
//! until the test lets them through again: what a worker sees when the
//! server restarts) or freeze (nothing passes either way, and nothing
//! breaks: a network that stalls). Without touching a server other tests
//! share.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A proxy listening on a loopback port, forwarding to `upstream`.
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    /// Cut: connections are turned away.
    cut: AtomicBool,
    /// Frozen: bytes wait in the proxy.
    frozen: Arc<AtomicBool>,
    /// Both ends of every connection made, to break them when cut.
    open: Mutex<Vec<TcpStream>>,
}

impl TcpProxy {
    /// Listen on a free loopback port and forward to `upstream`
    /// (`host:port`).
    pub fn start(upstream: &str) -> Self {
        let upstream = upstream
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("resolve {upstream}: {e}"))
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            cut: AtomicBool::new(false),
            frozen: Arc::new(AtomicBool::new(false)),
            open: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                // While cut, a new connection is closed at once.
                if !accepting.cut.load(Ordering::SeqCst) {
                    let _ = accepting.forward(client);
                }
            }
        });
        Self { port, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Break every connection and turn new ones away until [`Self::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Let connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Hold every byte, both ways, until [`Self::thaw`].
    pub fn freeze(&self) {
        self.shared.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.shared.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

impl Shared {
    /// Connect `client` to the upstream and pump bytes both ways.
    fn forward(&self, client: TcpStream) -> io::Result<()> {
        let server = TcpStream::connect(self.upstream)?;
        let mut open = self.open.lock().unwrap();
        open.push(client.try_clone()?);
        open.push(server.try_clone()?);
        drop(open);
        pump(client.try_clone()?, server.try_clone()?, &self.frozen);
        pump(server, client, &self.frozen);
        Ok(())
    }
}

/// Copy `from` to `to`, holding what was read while `frozen`, until either
/// ends; then end both.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &Arc<AtomicBool>) {
    let frozen = Arc::clone(frozen);
    thread::spawn(move || {
        let mut buffer = [0; 16 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer) {
            while frozen.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
