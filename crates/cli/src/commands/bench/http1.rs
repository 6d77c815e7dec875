//! A minimal HTTP/1.1 client connection, enough for one fixed POST at a time over keep-alive:
//! far cheaper per request than a general client, so the load tool leaves the cores to the
//! processes it measures.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Why a request got no whole answer.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("the server closed the connection mid-answer")]
    Closed,
}

impl Http1Error {
    /// A short name for counting errors by kind: the I/O error kind, not its message.
    pub fn kind(&self) -> String {
        match self {
            Self::Io(err) => err.kind().to_string(),
            Self::Malformed(_) => "malformed response".to_owned(),
            Self::Closed => "closed mid-answer".to_owned(),
        }
    }
}

/// One request's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub status: u16,
    /// From the request's first byte written to the answer's last byte read.
    pub total: Duration,
}

/// What [`Connection::exchange`] hands the answer's body to, piece by piece as it is read.
pub trait BodySink {
    /// `bytes` of the body (chunked framing removed) were read `at` after the request's
    /// first byte was written.
    fn data(&mut self, bytes: &[u8], at: Duration);
}

/// A keep-alive connection to one server.
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
}

enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

impl Connection {
    pub async fn open(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            start: 0,
        })
    }

    /// Sends `request` (a whole HTTP/1.1 request) and reads the whole answer, handing its body
    /// to `sink`. Returns the outcome and whether the connection may be reused.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        sink: &mut impl BodySink,
    ) -> Result<(Exchange, bool), Http1Error> {
        self.buf.clear();
        self.start = 0;
        let began = Instant::now();
        self.stream.write_all(request).await?;
        let (status, framing, keep_alive) = self.read_head().await?;
        match framing {
            Framing::Length(len) => {
                self.fill(len).await?;
                sink.data(&self.buf[self.start..self.start + len], began.elapsed());
                self.start += len;
            }
            Framing::Chunked => loop {
                let size = self.chunk_size().await?;
                if size == 0 {
                    // No trailers: the final CRLF.
                    self.fill(2).await?;
                    self.start += 2;
                    break;
                }
                self.fill(size + 2).await?;
                sink.data(&self.buf[self.start..self.start + size], began.elapsed());
                self.start += size + 2;
            },
            Framing::Close => loop {
                if self.buf.len() > self.start {
                    sink.data(&self.buf[self.start..], began.elapsed());
                    self.start = self.buf.len();
                }
                if self.read_more().await? == 0 {
                    break;
                }
            },
        }
        let exchange = Exchange {
            status,
            total: began.elapsed(),
        };
        Ok((exchange, keep_alive && !matches!(framing, Framing::Close)))
    }

    async fn read_head(&mut self) -> Result<(u16, Framing, bool), Http1Error> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response
                .parse(&self.buf[self.start..])
                .map_err(|_| Http1Error::Malformed("bad head"))?
            {
                httparse::Status::Complete(len) => {
                    let status = response.code.unwrap_or(0);
                    let mut framing = Framing::Close;
                    let mut keep_alive = response.version == Some(1);
                    for header in response.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            let len = std::str::from_utf8(header.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .ok_or(Http1Error::Malformed("bad content-length"))?;
                            framing = Framing::Length(len);
                        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
                            && header.value.eq_ignore_ascii_case(b"chunked")
                        {
                            framing = Framing::Chunked;
                        } else if header.name.eq_ignore_ascii_case("connection") {
                            keep_alive = !header.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    self.start += len;
                    return Ok((status, framing, keep_alive));
                }
                httparse::Status::Partial => {
                    if self.read_more().await? == 0 {
                        return Err(Http1Error::Closed);
                    }
                }
            }
        }
    }

    /// Reads a chunk-size line (extensions ignored) and consumes it.
    async fn chunk_size(&mut self) -> Result<usize, Http1Error> {
        loop {
            let pending = &self.buf[self.start..];
            if let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                let line = std::str::from_utf8(&pending[..end])
                    .map_err(|_| Http1Error::Malformed("bad chunk size"))?;
                let hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .map_err(|_| Http1Error::Malformed("bad chunk size"))?;
                self.start += end + 2;
                return Ok(size);
            }
            if self.read_more().await? == 0 {
                return Err(Http1Error::Closed);
            }
        }
    }

    /// Reads until `len` unconsumed bytes are buffered.
    async fn fill(&mut self, len: usize) -> Result<(), Http1Error> {
        while self.buf.len() - self.start < len {
            if self.read_more().await? == 0 {
                return Err(Http1Error::Closed);
            }
        }
        Ok(())
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.reserve(8 * 1024);
        self.stream.read_buf(&mut self.buf).await
    }
}
