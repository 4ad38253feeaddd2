//! A TCP proxy between the host and its PostgreSQL server that a test can
//! cut: every connection through it breaks, and new ones are turned away,
//! until the test lets them through again. That is what a worker sees when
//! the server restarts or the network drops, without touching a server
//! other tests share.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A proxy listening on a loopback port, forwarding to `upstream`.
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    /// Cut: connections are turned away.
    cut: AtomicBool,
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
        pump(client.try_clone()?, server.try_clone()?);
        pump(server, client);
        Ok(())
    }
}

/// Copy `from` to `to` until either ends, then end both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
