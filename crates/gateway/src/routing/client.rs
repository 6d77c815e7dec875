//! The gateway's HTTP/1.1 client for upstreams: keep-alive connections, pooled per origin, each
//! driven by the request that uses it rather than by a task of its own.
//!
//! hyper's pooled client (hyper_util's legacy `Client`) runs every connection on a spawned
//! task and passes requests, answers and body chunks to it over channels, through a pool shared
//! behind a lock. On a fast upstream those hand-offs and that client's large futures were about a
//! quarter of the gateway's own CPU time per relayed request. Here the request's task polls the
//! connection (hyper's `client::conn::http1`) alongside the answer and its body, so a relayed
//! request is one task from the client's bytes to the upstream's and back.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service as _;

/// How long an idle connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most idle connections kept per origin; more are closed when they come back.
const MAX_IDLE_PER_ORIGIN: usize = 1024;

/// How often idle connections are checked against [`IDLE_TIMEOUT`].
const REAP_EVERY: Duration = Duration::from_secs(5);

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type RequestBody = Full<Bytes>;

/// An upstream's answer, its body not read yet.
pub(crate) type UpstreamResponse = http::Response<UpstreamBody>;

/// Why a request got no answer head.
pub(crate) type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// Keep-alive HTTP/1.1 connections to upstreams, `https://` through rustls with the webpki
/// roots. A clone shares the pool. Each per-core worker has its own client (see
/// [`crate::AppState::for_worker`]), so that its connections are polled by its own reactor.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connector: HttpsConnector<HttpConnector>,
    /// A std lock: held only to push or pop one connection. Hashed with foldhash: the
    /// origins come from the operator's table, not from clients, and SipHash was a visible
    /// share of a relayed request's time.
    idle: Mutex<HashMap<Origin, Vec<Idle>, foldhash::fast::RandomState>>,
}

#[derive(Debug, Clone)]
struct Origin {
    https: bool,
    authority: Authority,
}

// On the authority as written: `Authority`'s own hash and equality fold case byte by byte,
// twice per relayed request (checkout and checkin), and the table's URLs name each host one
// way. One written two ways only gets two pools.
impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        self.https == other.https && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Origin {}

impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.https.hash(state);
        self.authority.as_str().hash(state);
    }
}

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl UpstreamClient {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        // Schemes are checked when the routing table is built.
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Self {
            inner: Arc::new(Inner {
                connector,
                idle: Mutex::new(HashMap::default()),
            }),
        }
    }

    /// Sends `request`, whose URI is absolute, on an idle connection to its origin or a new one,
    /// and returns the answer's head. A pooled connection the upstream closed while it sat idle
    /// is replaced by a new one without the request failing.
    ///
    /// Not an `async fn`: the request is taken apart before the future is made, so the future
    /// holds its parts once rather than both the request and its parts.
    pub(crate) fn send(
        &self,
        request: http::Request<RequestBody>,
    ) -> impl Future<Output = Result<UpstreamResponse, ClientError>> + Send + '_ {
        let prepared = prepare(request);
        async move {
            let (origin, target, mut request) = prepared?;
            while let Some(conn) = self.checkout(&origin) {
                match conn.send(request).await {
                    Ok(response) => return Ok(response),
                    Err(Unsent::Returned(returned)) => request = *returned,
                    Err(Unsent::Failed(err)) => return Err(err),
                }
            }
            // Boxed: the handshake's state holds the new stream (a TLS session, kilobytes),
            // which would otherwise be part of every request's future, reused connection or not.
            let conn = Box::pin(self.connect(&origin, target)).await?;
            conn.send(request).await.map_err(|unsent| match unsent {
                Unsent::Returned(_) => "the new upstream connection closed at once".into(),
                Unsent::Failed(err) => err,
            })
        }
    }

    /// Closes the idle connections past their timeout every few seconds, forever: run it
    /// alongside the server that uses this client.
    ///
    /// Its timer, always due within seconds, also spares every request a wake-up of the
    /// runtime: tokio wakes its driver (a write and a read of an eventfd) whenever a new timer
    /// becomes the earliest, which each request's deadline would be on an otherwise timerless
    /// runtime.
    pub(crate) async fn reap_idle(self) -> std::convert::Infallible {
        let mut tick = tokio::time::interval(REAP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            self.lock_idle().retain(|_, stack| {
                stack.retain(|entry| entry.since.elapsed() <= IDLE_TIMEOUT);
                !stack.is_empty()
            });
        }
    }

    /// The most recently returned idle connection to `origin` that is still open, if any.
    fn checkout(&self, origin: &Origin) -> Option<Box<Conn>> {
        let mut idle = self.lock_idle();
        let stack = idle.get_mut(origin)?;
        while let Some(entry) = stack.pop() {
            if entry.since.elapsed() > IDLE_TIMEOUT {
                // The stack is in return order: everything under this one is older still.
                stack.clear();
                break;
            }
            if entry.conn.sender.is_ready() {
                return Some(entry.conn);
            }
        }
        None
    }

    async fn connect(&self, origin: &Origin, target: http::Uri) -> Result<Box<Conn>, ClientError> {
        let io = self.inner.connector.clone().call(target).await?;
        let (sender, driver) = http1::handshake(io).await?;
        Ok(Box::new(Conn {
            sender,
            driver: Some(driver),
            origin: origin.clone(),
            pool: Arc::downgrade(&self.inner),
        }))
    }

    fn checkin(&self, conn: Box<Conn>) {
        let mut idle = self.lock_idle();
        let stack = idle.entry(conn.origin.clone()).or_default();
        if stack.len() < MAX_IDLE_PER_ORIGIN {
            stack.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    fn lock_idle(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Origin, Vec<Idle>, foldhash::fast::RandomState>> {
        // A poisoned lock only means a panic while pushing or popping; the pool stays usable.
        self.inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `request`'s origin, its absolute URI (to connect with), and the request as HTTP/1.1 sends
/// it: naming its path only (origin form), with a `Host` header.
fn prepare(
    request: http::Request<RequestBody>,
) -> Result<(Origin, http::Uri, http::Request<RequestBody>), ClientError> {
    let (mut parts, body) = request.into_parts();
    let origin = Origin {
        https: parts.uri.scheme() == Some(&Scheme::HTTPS),
        authority: parts
            .uri
            .authority()
            .cloned()
            .ok_or("the upstream URL has no host")?,
    };
    if !parts.headers.contains_key(http::header::HOST) {
        let host = http::HeaderValue::from_str(origin.authority.as_str())?;
        parts.headers.insert(http::header::HOST, host);
    }
    let path = match parts.uri.path_and_query() {
        Some(path) => http::Uri::from(path.clone()),
        None => http::Uri::from_static("/"),
    };
    let target = std::mem::replace(&mut parts.uri, path);
    Ok((origin, target, http::Request::from_parts(parts, body)))
}

/// One keep-alive connection, polled by whoever holds it. Always boxed: its state (hyper's
/// buffers, a TLS session) is kilobytes, which every future and answer holding it would copy
/// each time it moves.
struct Conn {
    sender: SendRequest<RequestBody>,
    /// `None` once the connection has ended.
    driver: Option<Connection<Io, RequestBody>>,
    origin: Origin,
    /// The pool it goes back to; weak, since the pool holds it while it is idle.
    pool: Weak<Inner>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("origin", &self.origin)
            .field("open", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a request was not answered on a connection.
enum Unsent {
    /// The connection had closed before the request was written: it can go on another.
    Returned(Box<http::Request<RequestBody>>),
    Failed(ClientError),
}

impl Conn {
    /// Makes what progress the connection can: writes what is queued, reads what has come.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver
            && let Poll::Ready(ended) = Pin::new(driver).poll(cx)
        {
            if let Err(err) = ended {
                tracing::debug!(origin = %self.origin.authority, error = %err, "upstream connection ended");
            }
            self.driver = None;
        }
    }

    async fn send(
        mut self: Box<Self>,
        request: http::Request<RequestBody>,
    ) -> Result<UpstreamResponse, Unsent> {
        let mut answer = std::pin::pin!(self.sender.try_send_request(request));
        let head = std::future::poll_fn(|cx| {
            self.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await;
        match head {
            Ok(response) => Ok(response.map(|incoming| UpstreamBody {
                incoming,
                conn: Some(self),
            })),
            Err(mut err) => match err.take_message() {
                Some(request) => Err(Unsent::Returned(Box::new(request))),
                None => Err(Unsent::Failed(err.into_error().into())),
            },
        }
    }
}

/// An upstream answer's body. Reading it drives its connection, which goes back to the pool
/// once the body has been read to its end; dropped before, the connection is closed.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    incoming: Incoming,
    conn: Option<Box<Conn>>,
}

impl UpstreamBody {
    /// Puts the connection back in its pool when it can take another request.
    fn release(&mut self, cx: &mut Context<'_>) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Lets the connection see the end of the answer and ask for the next request.
        conn.drive(cx);
        if conn.driver.is_some()
            && conn.sender.is_ready()
            && let Some(inner) = conn.pool.upgrade()
        {
            UpstreamClient { inner }.checkin(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        let frame = ready!(Pin::new(&mut this.incoming).poll_frame(cx));
        match &frame {
            None => this.release(cx),
            // A broken answer leaves the connection in no state to reuse.
            Some(Err(_)) => this.conn = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// A loopback HTTP/1.1 server answering every request with `ok`, which closes each
    /// connection after its first answer (without saying so) when `close_after_answer`.
    /// Returns its base URL and the counts of connections it accepted and saw closed.
    async fn server(close_after_answer: bool) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, ended) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Requests here have an empty body: the head ends the request.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if socket.write_all(answer).await.is_err() || close_after_answer {
                                return;
                            }
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                ended.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (url, accepted, closed)
    }

    async fn get(client: &UpstreamClient, url: &str) -> Bytes {
        let request = http::Request::get(format!("{url}/v1/models"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn connections_are_reused_once_an_answer_is_read() {
        let (url, accepted, closed) = server(false).await;
        let client = UpstreamClient::new(Duration::from_secs(1));
        for _ in 0..5 {
            assert_eq!(get(&client, &url).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // The pool does not keep itself alive: dropping the client closes what it held.
        drop(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while closed.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the idle connection stayed open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_without_failing_the_request() {
        let (url, accepted, _) = server(true).await;
        let client = UpstreamClient::new(Duration::from_secs(1));
        for _ in 0..3 {
            assert_eq!(get(&client, &url).await, "ok");
            // Idle long enough for the reactor to see the upstream's close.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unread_answer_closes_its_connection() {
        let (url, accepted, _) = server(false).await;
        let client = UpstreamClient::new(Duration::from_secs(1));
        let request = http::Request::get(format!("{url}/v1/models"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        drop(client.send(request).await.unwrap());
        assert_eq!(get(&client, &url).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
