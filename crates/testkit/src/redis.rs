//! A throwaway `redis-server` for tests: started on a free loopback port with its data in a
//! temporary directory, append-only persistence on, and killed when dropped.
//!
//! ```no_run
//! let redis = passerelle_testkit::redis::RedisServer::start().unwrap();
//! let url = redis.url(); // redis://127.0.0.1:<port>/
//! ```
//!
//! Tests that need the server to vanish (fail-open and fail-closed policies) call
//! [`RedisServer::stop`]; tests that prove persistence call [`RedisServer::restart`], which brings
//! it back on the same port from the same directory.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a starting server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a throwaway server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(
        "cannot run redis-server ({0}); install it (apt-get install redis-server) or set PASSERELLE_REDIS_SERVER"
    )]
    Spawn(#[source] std::io::Error),
    #[error("cannot prepare the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis-server did not answer PING within {0:?}; its log: {1}")]
    NotReady(Duration, String),
}

/// A running `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free port, persisting to an append-only file in a fresh directory.
    /// The binary is `redis-server` on the PATH, or `PASSERELLE_REDIS_SERVER` when set.
    pub fn start() -> Result<Self, RedisError> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL, no final save), as a crash or a network cut would
    /// look to clients. The append-only file keeps every acknowledged write (fsync always).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port from the same data directory.
    pub fn restart(&mut self) -> Result<(), RedisError> {
        self.stop();
        self.spawn()
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) -> Result<(), RedisError> {
        let binary =
            std::env::var("PASSERELLE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let log = self.dir.path().join("redis.log");
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(RedisError::Spawn)?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        Err(RedisError::NotReady(START_TIMEOUT, read_log(&log)))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// One RESP round trip: true once the server answers `+PONG` (not while it is still loading).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<unreadable: {e}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_and_restarts_on_the_same_port() {
        let mut redis = RedisServer::start().unwrap();
        assert!(ping(redis.port()));
        redis.stop();
        assert!(!ping(redis.port()));
        redis.restart().unwrap();
        assert!(ping(redis.port()));
        assert!(redis.url().starts_with("redis://127.0.0.1:"));
    }
}
