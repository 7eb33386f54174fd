//! Sending one request to one target and reading its response.
//!
//! Each captured connection gets its own keep-alive connection per target, so a
//! connection's requests reach the target in order; a bounded number stay open
//! (least recently used closed first, idle ones closed: see [`Connections`]). Every exchange has one deadline
//! (`--timeout`) for writing the request and reading the whole response, and
//! connecting has its own. Nothing is ever sent twice: a keep-alive connection the
//! target closed while idle is found before anything is written to it (and replaced,
//! counted); once a byte may have left, a failure is an error, not a retry.
//!
//! Latency: from just before the write that carries the request's last byte to the
//! arrival of the response's first byte (the kernel's receive timestamp, so a replayer
//! thread that runs late does not add to it), minus the connection's smallest
//! round-trip time (kernel `TCP_INFO`): what the capture measures on the server
//! (request's last byte in, response's first byte out).

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::flow::Direction;
use crate::http::message::{self, Head, MessageError};
use crate::http::{HttpConfig, HttpConnection, HttpMessage, HttpStats, MessageKind};

use super::request::TargetUrl;
use super::tls::{self, Stream};

/// Response bytes kept per exchange; a longer response is compared in part.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The request's last bytes are written by one call with the clock running: small
/// enough that the call does not wait for the target to read much.
pub(super) const LAST_WRITE: usize = 16 * 1024;

/// Bytes read from a target at a time.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// A target with the addresses its host resolved to at start.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: TargetUrl,
    /// `url` as text, formatted once (every outcome names its target).
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// `https://` targets: the TLS client configuration (see `replay::tls`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    pub fn resolve(url: TargetUrl) -> std::io::Result<Target> {
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(ErrorKind::NotFound, format!("{url}: the host resolves to no address")));
        }
        Ok(Target { name: url.to_string(), url, addrs, tls: None })
    }

    /// Uses `config` for this target if it is an `https://` one.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Target {
        if self.url.tls {
            self.tls = Some(config);
        }
        self
    }
}

/// A target's answer to one request.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The response's exact bytes (interim 1xx responses included), as framed.
    pub bytes: bytes::Bytes,
    /// Longer than [`MAX_RESPONSE_BYTES`]: `bytes` is its beginning.
    pub truncated: bool,
    /// See the module documentation.
    pub latency: Duration,
    /// The final head, parsed once when the answer was framed (status, header spans
    /// into `bytes`, body framing by the request's method), or why it does not parse.
    pub head: Result<(u16, Head), MessageError>,
}

/// Why a target did not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection (refused, unreachable, ...): nothing was sent.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake with an `https://` target failed: nothing was sent.
    #[error("tls: {0}")]
    Handshake(std::io::Error),
    /// The target did not take the whole request before the deadline.
    #[error("write: the request was not taken within {0:?} (the target may have part of it)")]
    WriteTimeout(Duration),
    #[error("write: {0}")]
    Write(std::io::Error),
    /// No complete response before the deadline.
    #[error("timeout: no complete response within {0:?}")]
    ReadTimeout(Duration),
    #[error("read: {0}")]
    Read(std::io::Error),
    /// The target closed the connection before a complete response.
    #[error("connection closed before a complete response")]
    Closed,
}

/// An open connection to a target.
struct Conn {
    stream: Stream,
    framer: HttpConnection,
}

/// Bounds on the keep-alive connections a worker keeps open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    /// Connections open at once; the least recently used is closed to make room.
    pub max_open: usize,
    /// A connection without a request for this long is closed: its captured
    /// connection has most likely ended (records do not say when one ends).
    pub idle: Duration,
}

impl Default for KeepAlive {
    fn default() -> KeepAlive {
        KeepAlive { max_open: 512, idle: IDLE_CLOSE }
    }
}

/// How long an unused keep-alive connection stays open (servers close theirs after
/// 5 to 75 s; one they closed is noticed before use anyway).
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// What became of a worker's target connections. Every connection opened is closed
/// for one of the reasons, so `opened - closed` are open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub opened: u64,
    /// Opened for a captured connection whose earlier target connection was closed
    /// while idle (by the target, or by the replayer: idle or to make room).
    pub reopened: u64,
    /// Closed by the replayer after [`KeepAlive::idle`] without a request.
    pub closed_idle: u64,
    /// Closed by the replayer to stay within [`KeepAlive::max_open`].
    pub closed_evicted: u64,
    /// Found closed by the target while idle, before a request was written to it.
    pub closed_by_target: u64,
    /// Closed after an exchange: the response asked for it, or the exchange failed.
    pub closed_after_exchange: u64,
    /// Still open when the worker finished.
    pub closed_at_end: u64,
}

impl ConnectionStats {
    /// (report counter name, value) pairs.
    pub fn fields(&self) -> [(&'static str, u64); 7] {
        [
            ("replay_connections_opened", self.opened),
            ("replay_connections_reopened", self.reopened),
            ("replay_connections_closed_idle", self.closed_idle),
            ("replay_connections_closed_evicted", self.closed_evicted),
            ("replay_connections_closed_by_target", self.closed_by_target),
            ("replay_connections_closed_after_exchange", self.closed_after_exchange),
            ("replay_connections_closed_at_end", self.closed_at_end),
        ]
    }
}

/// (captured connection, target index).
pub type Key = (Arc<str>, usize);

/// What [`Pool::check_out`] found for a key.
pub enum Checkout<C> {
    /// Its open connection, out of the pool for one exchange.
    Open(C),
    /// None usable: open a new one (room was made for it). `reopening`: the captured
    /// connection had one that was closed while idle.
    New { reopening: bool },
}

/// An idle connection in the pool.
struct Pooled<C> {
    conn: C,
    /// Its place in the least-recently-used order ([`Pool::lru`]).
    stamp: u64,
}

/// Keep-alive connections of one worker (or lane of the event-driven sender): one per
/// (captured connection, target index), so a captured connection's requests reach each
/// target in order on one connection. At most [`KeepAlive::max_open`] are open; idle
/// ones are closed after [`KeepAlive::idle`]. A connection is taken out for an
/// exchange and put back after it, so one is only ever closed between exchanges:
/// nothing is re-sent because of it. `C` is the connection type of the sender.
pub struct Pool<C> {
    keep_alive: KeepAlive,
    conns: std::collections::HashMap<Key, Pooled<C>>,
    /// Least recently used first: stamp -> key and its last use (so the idle check
    /// before each exchange needs no lookup by key).
    lru: std::collections::BTreeMap<u64, (Key, Instant)>,
    next_stamp: u64,
    closed: RecentlyClosed,
    pub stats: ConnectionStats,
}

impl<C> Pool<C> {
    pub fn new(keep_alive: KeepAlive) -> Pool<C> {
        let keep_alive = KeepAlive { max_open: keep_alive.max_open.max(1), ..keep_alive };
        Pool {
            keep_alive,
            conns: Default::default(),
            lru: Default::default(),
            next_stamp: 0,
            closed: RecentlyClosed::new(keep_alive.max_open.saturating_mul(4).clamp(1024, 16_384)),
            stats: ConnectionStats::default(),
        }
    }

    /// Idle connections open now.
    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// Takes `key`'s connection out for an exchange if `usable` (the target has not
    /// closed it while idle); else makes room for a new one.
    pub fn check_out(&mut self, key: &Key, now: Instant, usable: impl FnOnce(&mut C) -> bool) -> Checkout<C> {
        self.close_idle(now);
        let reopening = match self.conns.remove(key) {
            Some(mut idle) => {
                self.lru.remove(&idle.stamp);
                if usable(&mut idle.conn) {
                    return Checkout::Open(idle.conn);
                }
                self.stats.closed_by_target += 1;
                true
            }
            None => self.closed.forget(key),
        };
        while self.conns.len() >= self.keep_alive.max_open {
            let Some((_, (oldest, _))) = self.lru.pop_first() else { break };
            self.conns.remove(&oldest);
            self.closed.add(&oldest);
            self.stats.closed_evicted += 1;
        }
        Checkout::New { reopening }
    }

    /// Counts a connection opened after [`Checkout::New`].
    pub fn opened(&mut self, reopening: bool) {
        self.stats.opened += 1;
        self.stats.reopened += u64::from(reopening);
    }

    /// Puts a connection back after its exchange (`last_used`: when it began) if it
    /// may be used again, else closes it.
    pub fn check_in(&mut self, key: Key, conn: C, keep: bool, last_used: Instant) {
        if !keep {
            self.stats.closed_after_exchange += 1;
            return;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.lru.insert(stamp, (key.clone(), last_used));
        self.conns.insert(key, Pooled { conn, stamp });
    }

    /// Closes the connections unused for [`KeepAlive::idle`] (also called by an idle worker).
    pub fn close_idle(&mut self, now: Instant) {
        while let Some((_, (_, last_used))) = self.lru.first_key_value() {
            if now.duration_since(*last_used) < self.keep_alive.idle {
                break;
            }
            let (_, (key, _)) = self.lru.pop_first().expect("looked at");
            self.conns.remove(&key);
            self.closed.add(&key);
            self.stats.closed_idle += 1;
        }
    }

    /// Closes every connection (the worker is done).
    pub fn close_all(&mut self) {
        self.stats.closed_at_end += self.conns.len() as u64;
        self.conns.clear();
        self.lru.clear();
    }
}

/// The blocking sender's connections (one worker thread each; `https://` targets).
pub struct Connections {
    pool: Pool<Conn>,
    /// Read buffer, reused by every exchange.
    buf: Vec<u8>,
    /// Tests: a pause after writing the request, as when the replayer's thread is
    /// descheduled right after its write.
    #[cfg(test)]
    pause_after_write: Duration,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections::new(KeepAlive::default())
    }
}

impl Connections {
    pub fn new(keep_alive: KeepAlive) -> Connections {
        Connections {
            pool: Pool::new(keep_alive),
            buf: vec![0u8; READ_CHUNK],
            #[cfg(test)]
            pause_after_write: Duration::ZERO,
        }
    }

    pub fn stats(&self) -> &ConnectionStats {
        &self.pool.stats
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.pool.open()
    }

    /// Sends `request` to target number `index` on the connection of `captured`
    /// (opened on demand) and reads one response, within `timeout` for connecting and
    /// `timeout` for the exchange.
    pub fn send(&mut self, index: usize, target: &Target, captured: &str, request: &[u8], timeout: Duration) -> Result<Answer, SendError> {
        let now = Instant::now();
        let key = (Arc::from(captured), index);
        let mut conn = match self.pool.check_out(&key, now, |c| c.stream.still_open()) {
            Checkout::Open(conn) => conn,
            Checkout::New { reopening } => {
                let tcp = connect(&target.addrs, timeout)?;
                let stream = match &target.tls {
                    Some(config) => tls::handshake(tcp, config.clone(), &target.url.host, timeout).map_err(SendError::Handshake)?,
                    None => Stream::Plain(tcp),
                };
                self.pool.opened(reopening);
                Conn { stream, framer: response_framer() }
            }
        };
        #[cfg(test)]
        let pause = self.pause_after_write;
        #[cfg(not(test))]
        let pause = Duration::ZERO;
        let result = exchange(&mut conn, &mut self.buf, request, timeout, pause);
        self.pool.check_in(key, conn, matches!(result, Ok((_, true))), now);
        result.map(|(answer, _)| answer)
    }

    /// Closes the connections unused for [`KeepAlive::idle`] (also called by an idle worker).
    pub fn close_idle(&mut self, now: Instant) {
        self.pool.close_idle(now);
    }

    /// Closes every connection (the worker is done).
    pub fn close_all(&mut self) {
        self.pool.close_all();
    }
}

/// A framer for one target connection's responses.
pub(super) fn response_framer() -> HttpConnection {
    HttpConnection::new(HttpConfig { max_message_bytes: MAX_RESPONSE_BYTES, ..HttpConfig::default() })
}

/// Captured connections whose target connection the replayer closed lately (as
/// hashes of their keys), so that a later request of theirs counts as a reopening.
/// Bounded: the oldest are forgotten (a reopening after that is not counted).
struct RecentlyClosed {
    /// Key hash -> sequence number of its latest close.
    by_key: std::collections::HashMap<u64, u64>,
    order: std::collections::VecDeque<(u64, u64)>,
    next: u64,
    capacity: usize,
}

impl RecentlyClosed {
    fn new(capacity: usize) -> RecentlyClosed {
        RecentlyClosed { by_key: Default::default(), order: Default::default(), next: 0, capacity }
    }

    fn hash(key: &Key) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
    }

    fn add(&mut self, key: &Key) {
        let h = Self::hash(key);
        self.by_key.insert(h, self.next);
        self.order.push_back((h, self.next));
        self.next += 1;
        if self.order.len() > self.capacity {
            let (h, seq) = self.order.pop_front().expect("not empty");
            if self.by_key.get(&h) == Some(&seq) {
                self.by_key.remove(&h);
            }
        }
    }

    /// Whether `key` was closed lately; forgets it.
    fn forget(&mut self, key: &Key) -> bool {
        self.by_key.remove(&Self::hash(key)).is_some()
    }
}

fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, SendError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                enable_receive_timestamps(&stream);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(SendError::Connect(last.unwrap_or_else(|| ErrorKind::NotFound.into())))
}

/// Whether an idle keep-alive connection can take a request: the target has neither
/// closed it nor sent anything unasked (an unasked 408 would pass for the next answer).
pub(super) fn still_open(stream: &impl AsRawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a valid socket and a 1-byte buffer. One non-blocking peek, whatever the
    // socket's mode: it would block exactly when the connection is open and quiet.
    let n = unsafe { libc::recv(stream.as_raw_fd(), &mut byte as *mut u8 as *mut libc::c_void, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock
}

/// One non-blocking `recv`/`send` on a socket left in blocking mode (the common case
/// of an exchange needs no timeout to be set): `WouldBlock` when it would wait.
pub(super) fn recv_now(stream: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: a valid socket and a buffer of `buf.len()` writable bytes.
    let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

pub(super) fn send_now(stream: &impl AsRawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: a valid socket and `buf.len()` readable bytes. MSG_NOSIGNAL: a closed
    // connection is an EPIPE error, not a SIGPIPE.
    let n = unsafe { libc::send(stream.as_raw_fd(), buf.as_ptr() as *const libc::c_void, buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Time left before `deadline`, or None when it passed.
fn left(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

fn write_until(stream: &mut Stream, mut bytes: &[u8], deadline: Instant, timeout: Duration) -> Result<(), SendError> {
    // Plain TCP: most requests fit the socket buffer at once, without setting a timeout.
    if let (Stream::Plain(tcp), false) = (&*stream, bytes.is_empty()) {
        match send_now(tcp, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(SendError::Write(e)),
        }
    }
    while !bytes.is_empty() {
        let left = left(deadline).ok_or(SendError::WriteTimeout(timeout))?;
        stream.tcp().set_write_timeout(Some(left)).map_err(SendError::Write)?;
        match stream.write(bytes) {
            Ok(0) => return Err(SendError::Write(ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err(SendError::WriteTimeout(timeout)),
            Err(e) => return Err(SendError::Write(e)),
        }
    }
    Ok(())
}

/// Asks the kernel to stamp received data with its arrival time (`SO_TIMESTAMPNS`).
pub(super) fn enable_receive_timestamps(stream: &impl AsRawFd) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int option value. Failure only loses precision.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Reads like `read`, and returns the kernel's arrival time of the data read (of its
/// last segment; read 1 byte to get the first one's) when the kernel gave one.
pub(super) fn read_timestamped(stream: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<SystemTime>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // u64s: aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer in it outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: walking the control messages the kernel wrote, with the libc macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                if ts.tv_sec > 0 {
                    stamp = Some(SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

/// The connection's smallest round-trip time seen by the kernel.
pub(super) fn min_rtt(stream: &impl AsRawFd) -> Option<Duration> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut info as *mut _ as *mut libc::c_void, &mut len)
    };
    let filled = len as usize >= std::mem::offset_of!(libc::tcp_info, tcpi_min_rtt) + 4;
    (rc == 0 && filled && info.tcpi_min_rtt > 0 && info.tcpi_min_rtt != u32::MAX).then(|| Duration::from_micros(info.tcpi_min_rtt.into()))
}

/// Writes the request and reads one response. Returns the answer and whether the
/// connection may be used again.
fn exchange(conn: &mut Conn, buf: &mut [u8], request: &[u8], timeout: Duration, pause_after_write: Duration) -> Result<(Answer, bool), SendError> {
    let deadline = Instant::now() + timeout;
    let mut stats = HttpStats::default();
    let mut msgs: Vec<HttpMessage> = Vec::new();
    // The framer pairs the response with this request (a HEAD answer has no body).
    conn.framer.on_data(Direction::ClientToServer, request, 0, &mut stats, &mut msgs);
    msgs.clear();
    let (head, last) = request.split_at(request.len() - request.len().min(LAST_WRITE));
    write_until(&mut conn.stream, head, deadline, timeout)?;
    let (started, started_wall) = (Instant::now(), SystemTime::now());
    write_until(&mut conn.stream, last, deadline, timeout)?;
    if !pause_after_write.is_zero() {
        std::thread::sleep(pause_after_write);
    }
    // When the first response byte arrived: the kernel's stamp, else when it was read.
    let mut first_byte: Option<Duration> = None;
    let mut closed = false;
    let response = loop {
        if let Some(i) = msgs.iter().position(|m| m.kind == MessageKind::Response) {
            break msgs.swap_remove(i);
        }
        if closed {
            return Err(SendError::Closed);
        }
        let left = left(deadline).ok_or(SendError::ReadTimeout(timeout))?;
        // Plain TCP after the first byte: the rest has usually arrived with it; a
        // timeout is set only when a read has to wait.
        let ready = match (&conn.stream, first_byte) {
            (Stream::Plain(tcp), Some(_)) => match recv_now(tcp, buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => None,
                other => Some(other.map(|n| (n, None))),
            },
            _ => None,
        };
        let read = match ready {
            Some(read) => read,
            None => {
                conn.stream.tcp().set_read_timeout(Some(left)).map_err(SendError::Read)?;
                match first_byte {
                    // One byte first: its stamp is the first segment's (TLS: the first record's).
                    None => conn.stream.read_first(&mut buf[..1]),
                    Some(_) => conn.stream.read(buf).map(|n| (n, None)),
                }
            }
        };
        match read {
            Ok((0, _)) => {
                closed = true;
                conn.framer.on_close(0, &mut stats, &mut msgs);
            }
            Ok((n, stamp)) => {
                if first_byte.is_none() {
                    first_byte = Some(waited_since((started, started_wall), stamp));
                }
                conn.framer.on_data(Direction::ServerToClient, &buf[..n], 0, &mut stats, &mut msgs);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err(SendError::ReadTimeout(timeout)),
            Err(e) => return Err(SendError::Read(e)),
        }
    };
    let waited = first_byte.unwrap_or_else(|| started.elapsed());
    Ok(answer_of(conn.stream.tcp(), &conn.framer, response, waited, closed))
}

/// How long after `started` (just before the write of the request's last part) the
/// response's first byte arrived: the kernel's receive `stamp`, else now.
pub(super) fn waited_since(started: (Instant, SystemTime), stamp: Option<SystemTime>) -> Duration {
    match stamp {
        Some(at) => at.duration_since(started.1).unwrap_or_default(),
        None => started.0.elapsed(),
    }
}

/// The answer of a framed `response` whose first byte came `waited` after the request
/// (see the module documentation), and whether its connection may be used again. The
/// response's head is parsed here, once, for everything after: whether it asks to
/// close, its status, and the comparison (from the framer's parse of it when it has
/// one head: no second parse).
pub(super) fn answer_of(stream: &impl AsRawFd, framer: &HttpConnection, response: HttpMessage, waited: Duration, closed: bool) -> (Answer, bool) {
    let latency = waited.saturating_sub(min_rtt(stream).unwrap_or_default());
    let method = response.method.as_deref();
    // The framer's parse when it parsed a single head (no interim 1xx before it).
    let head = match (&response.head, response.status) {
        (Some(spans), Some(status)) => message::framed_response(&response.bytes, status, spans, method),
        _ => message::parse_response(&response.bytes, method),
    }
    .map(|r| (r.status, r.head));
    let asks_to_close = head.as_ref().is_ok_and(|(_, head)| asks_to_close(&response.bytes, head));
    let keep = !closed && !framer.is_ignored() && !asks_to_close;
    (Answer { bytes: response.bytes, truncated: response.truncated, latency, head }, keep)
}

/// A `Connection: close` in a response's `head` (parsed from `raw`).
fn asks_to_close(raw: &[u8], head: &Head) -> bool {
    head.headers(raw).any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server on 127.0.0.1 that counts the connections it accepts and runs `handle`
    /// on each (in its own thread). Also used by the event loop's tests.
    pub(in crate::replay) fn server(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> (Target, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url: TargetUrl = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (count, handle) = (accepted.clone(), Arc::new(handle));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let handle = handle.clone();
                std::thread::spawn(move || handle(stream));
            }
        });
        (Target::resolve(url).unwrap(), accepted)
    }

    /// Reads one request head (requests here have no body).
    fn read_head(stream: &mut TcpStream) -> bool {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            match stream.read(&mut b) {
                Ok(1) => got.push(b[0]),
                _ => return false,
            }
        }
        true
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// Issue 11, bug 5 ("requests sent twice"): a request that timed out before any
    /// response byte was sent again on a fresh connection (40 requests for 20).
    #[test]
    fn requests_sent_twice() {
        let received = Arc::new(AtomicUsize::new(0));
        let seen = received.clone();
        let (target, accepted) = server(move |mut s| {
            while read_head(&mut s) {
                seen.fetch_add(1, Ordering::SeqCst);
                // Never answers; keeps the connection open a while.
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let mut conns = Connections::default();
        for i in 0..3 {
            let e = conns.send(0, &target, &format!("c{i}"), GET, Duration::from_millis(300)).unwrap_err();
            assert!(matches!(e, SendError::ReadTimeout(_)), "{e}");
        }
        // The server thread may read the last head late on a loaded host: wait for it,
        // then long enough for a repeat to show.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(received.load(Ordering::SeqCst), 3, "each request reached the target exactly once");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn closed_keep_alive_connection_is_replaced_before_sending() {
        let (target, accepted) = server(|mut s| {
            // Answers one request, then closes the connection while it is idle.
            if read_head(&mut s) {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        let mut conns = Connections::default();
        let a = conns.send(0, &target, "c", GET, Duration::from_secs(5)).unwrap();
        assert!(a.bytes.ends_with(b"ok"));
        std::thread::sleep(Duration::from_millis(100));
        let b = conns.send(0, &target, "c", GET, Duration::from_secs(5)).unwrap();
        assert!(b.bytes.ends_with(b"ok"));
        assert_eq!((conns.stats().reopened, conns.stats().closed_by_target, accepted.load(Ordering::SeqCst)), (1, 1, 2));
    }

    /// Issue 11, bug 6 ("hangs"), I/O part: a large request to a target that never
    /// reads blocked forever (no write timeout).
    #[test]
    fn hangs_on_a_target_that_never_reads() {
        let (target, accepted) = server(|s| {
            std::thread::sleep(Duration::from_secs(5));
            drop(s);
        });
        let mut big = b"POST / HTTP/1.1\r\nContent-Length: 50000000\r\n\r\n".to_vec();
        big.resize(big.len() + 50_000_000, b'x');
        let started = Instant::now();
        let e = Connections::default().send(0, &target, "c", &big, Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, SendError::WriteTimeout(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4), "bounded by the timeout, not by the target");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// Issue 11, bug 3 ("latency is under-reported"): the clock started after the
    /// request was written, so when the replayer's thread was descheduled right after
    /// its write, the answer was already there and the latency came out near zero.
    #[test]
    fn latency_is_under_reported() {
        let (target, _) = server(|mut s| {
            while read_head(&mut s) {
                // The answer takes 100 ms.
                std::thread::sleep(Duration::from_millis(100));
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            }
        });
        // The replayer's thread "descheduled" for 400 ms right after its write.
        let mut conns = Connections { pause_after_write: Duration::from_millis(400), ..Connections::default() };
        let a = conns.send(0, &target, "c", GET, Duration::from_secs(5)).unwrap();
        // Not ~0 (clock started late), not ~400 ms (answer seen late): the kernel's
        // arrival stamp of the first byte, measured from before the write.
        assert!(a.latency >= Duration::from_millis(99), "{:?}", a.latency);
        assert!(a.latency < Duration::from_millis(300), "{:?}: the first byte's arrival, not when it was read", a.latency);
        // HEAD answers have no body whatever they announce: framed by the request's method.
        let (target, _) = server(|mut s| {
            while read_head(&mut s) {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
            }
        });
        let a = Connections::default().send(0, &target, "c", b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(5)).unwrap();
        assert_eq!(&a.bytes[..], b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    }

    /// A long replay kept one connection per captured connection until the end (see
    /// `keep_alive_connections_pile_up_in_a_long_replay` in tests/replay_cli.rs): now at
    /// most `max_open` stay open, the least recently used closed first, idle ones closed,
    /// and a captured connection that comes back gets a new one, counted.
    #[test]
    fn keep_alive_connections_are_bounded_and_closed_when_idle() {
        let open = Arc::new(AtomicUsize::new(0));
        let (received, counted) = (Arc::new(AtomicUsize::new(0)), open.clone());
        let seen = received.clone();
        let (target, accepted) = server(move |mut s| {
            counted.fetch_add(1, Ordering::SeqCst);
            while read_head(&mut s) {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            }
            counted.fetch_sub(1, Ordering::SeqCst);
        });
        let mut conns = Connections::new(KeepAlive { max_open: 2, idle: Duration::from_millis(300) });
        let t = Duration::from_secs(5);
        for captured in ["a", "b", "a", "c", "a", "b"] {
            conns.send(0, &target, captured, GET, t).unwrap();
            assert!(conns.open() <= 2);
        }
        // a, b (open 2); a reused; c evicts b; a reused; b evicts c and is a reopening.
        let stats = *conns.stats();
        assert_eq!((stats.opened, stats.closed_evicted, stats.reopened), (4, 2, 1), "{stats:?}");
        assert_eq!((received.load(Ordering::SeqCst), accepted.load(Ordering::SeqCst)), (6, 4), "each request sent once");
        std::thread::sleep(Duration::from_millis(350));
        conns.close_idle(Instant::now());
        assert_eq!((conns.open(), conns.stats().closed_idle), (0, 2));
        conns.send(0, &target, "a", GET, t).unwrap();
        conns.close_all();
        let s = *conns.stats();
        assert_eq!((s.opened, s.reopened, s.closed_at_end), (5, 2, 1), "{s:?}");
        assert_eq!(s.opened, s.closed_idle + s.closed_evicted + s.closed_by_target + s.closed_after_exchange + s.closed_at_end);
    }

    /// The answer's head is parsed once, when framed: its `Connection: close` (here in
    /// a list) closes the connection after the exchange even though the target keeps
    /// it open, and its status is there for the outcome.
    #[test]
    fn an_answer_that_asks_to_close_is_not_reused() {
        let (target, accepted) = server(|mut s| {
            while read_head(&mut s) {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, Close\r\n\r\nok");
            }
        });
        let mut conns = Connections::default();
        for _ in 0..2 {
            let a = conns.send(0, &target, "c", GET, Duration::from_secs(5)).unwrap();
            assert_eq!(a.head.as_ref().map(|(status, _)| *status), Ok(200));
        }
        assert_eq!((accepted.load(Ordering::SeqCst), conns.stats().closed_after_exchange, conns.open()), (2, 2, 0));
    }

    #[test]
    fn refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url: TargetUrl = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
        drop(listener);
        let e = Connections::default().send(0, &Target::resolve(url).unwrap(), "c", GET, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, SendError::Connect(_)), "{e}");
    }
}
