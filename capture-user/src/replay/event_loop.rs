//! The event-driven sender (plain `http://` targets and baseline): a few threads, each
//! running one epoll loop ([`mio`]) over the non-blocking target connections of its
//! lanes, so that one wake-up serves every socket that became ready.
//!
//! A lane is what a worker thread of the blocking sender is: it replays the jobs
//! dispatched to it (all of a captured connection's go to one lane) one after the
//! other, each to the baseline and then to every target, on keep-alive connections of
//! its own ([`Pool`]); concurrency is the number of lanes. Each request is a small
//! state machine: connect (when no open connection) -> write the request -> read until
//! the framer has the whole response. Deadlines, the latency measurement, the pool's
//! rules and the reports are the blocking sender's ([`super::target`]): nothing is
//! re-sent, a request that times out is an error.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::flow::Direction;
use crate::http::{HttpConnection, HttpMessage, HttpStats, MessageKind};

use super::target::{self, Answer, Checkout, ConnectionStats, KeepAlive, Key, Pool, SendError, LAST_WRITE, READ_CHUNK};
use super::{admitted, failure, report_connections, Job, Outbox, Plan, ReplayConfig, IDLE_SWEEP, JOBS_QUEUED};

/// The token of the waker the reader uses when it hands over jobs.
const WAKER: Token = Token(usize::MAX);

/// An open connection to a target.
struct Conn {
    stream: TcpStream,
    framer: HttpConnection,
}

/// One request on its way to one target.
enum Io {
    /// Connecting to the target's address number `addr`.
    Connecting { stream: TcpStream, addr: usize, reopening: bool, deadline: Instant },
    Exchanging(Exchange),
}

/// Writing a request and reading its response.
struct Exchange {
    conn: Conn,
    /// Where the request's last part begins (written with the clock running).
    last_from: usize,
    written: usize,
    /// When the write of the last part began (monotonic, wall clock).
    started: Option<(Instant, SystemTime)>,
    first_byte: Option<Duration>,
    deadline: Instant,
    /// When it began: the connection's last use.
    began: Instant,
    messages: Vec<HttpMessage>,
}

/// A job being sent: its plan, and the current send's connection.
struct Sending {
    job: Job,
    plan: Plan,
    key: Key,
    io: Option<Io>,
}

enum State {
    Idle,
    /// Waiting for the job's time (paced replays).
    Paced(Job),
    Sending(Box<Sending>),
}

struct Lane {
    queue: VecDeque<Job>,
    pool: Pool<Conn>,
    reported: ConnectionStats,
    state: State,
}

/// What a lane's step came to.
enum Step {
    /// Waiting for the socket (or for a deadline).
    Waiting,
    Done(Result<(Answer, bool), SendError>),
}

/// One thread of the event-driven sender.
pub(super) struct EventLoop {
    poll: Poll,
    lanes: Vec<Lane>,
    /// Threads of the sender: lane `n` of the replay is lane `n / threads` of thread `n % threads`.
    threads: usize,
    /// Paced lanes by their job's time.
    paced: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Jobs in the lanes' queues.
    queued: usize,
    buf: Vec<u8>,
    config: Arc<ReplayConfig>,
    out: Outbox,
}

impl EventLoop {
    /// The epoll instance of one loop and the waker that tells it jobs came. Made
    /// before any thread starts, so a system that refuses one (descriptors or memory
    /// exhausted) can fall back to the blocking sender.
    pub(super) fn prepare() -> std::io::Result<(Poll, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok((poll, waker))
    }

    /// A thread's loop over `lanes` lanes on a prepared epoll instance.
    pub(super) fn new(poll: Poll, lanes: usize, threads: usize, config: Arc<ReplayConfig>, keep_alive: KeepAlive, out: Outbox) -> EventLoop {
        let lanes = (0..lanes).map(|_| Lane { queue: VecDeque::new(), pool: Pool::new(keep_alive), reported: ConnectionStats::default(), state: State::Idle }).collect();
        let buf = vec![0u8; READ_CHUNK];
        EventLoop { poll, lanes, threads, paced: BinaryHeap::new(), queued: 0, buf, config, out }
    }

    /// Replays the jobs from `rx` until it is closed and every job is done (or the
    /// collector is gone).
    pub(super) fn run(mut self, rx: Receiver<Vec<Job>>) {
        let mut events = Events::with_capacity(1024);
        // Deadlines are seconds long: checked a tenth of the timeout late at most.
        let deadline_sweep = (self.config.timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(100));
        let (mut next_deadline_sweep, mut next_idle_sweep) = (Instant::now() + deadline_sweep, Instant::now() + IDLE_SWEEP);
        let mut input_done = false;
        loop {
            while !input_done && self.queued < JOBS_QUEUED * self.lanes.len() {
                match rx.try_recv() {
                    Ok(jobs) => {
                        for job in jobs {
                            let lane = job.lane / self.threads;
                            self.lanes[lane].queue.push_back(job);
                            self.queued += 1;
                            self.start_next(lane);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => input_done = true,
                }
            }
            if self.out.closed || (input_done && self.lanes.iter().all(|l| matches!(l.state, State::Idle) && l.queue.is_empty())) {
                break;
            }
            let mut wake_at = next_idle_sweep.min(next_deadline_sweep);
            if let Some(Reverse((at, _))) = self.paced.peek() {
                wake_at = wake_at.min(*at);
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wake_at.saturating_duration_since(Instant::now()))) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("replay: waiting for target connections failed: {e}; stopping this sender thread");
                    break;
                }
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.drive(event.token().0);
                }
            }
            let now = Instant::now();
            while let Some(&Reverse((at, lane))) = self.paced.peek() {
                if at > now {
                    break;
                }
                self.paced.pop();
                if let State::Paced(job) = std::mem::replace(&mut self.lanes[lane].state, State::Idle) {
                    self.begin_paced(lane, job);
                    self.start_next(lane);
                }
            }
            if now >= next_deadline_sweep {
                for lane in 0..self.lanes.len() {
                    self.expire(lane, now);
                }
                next_deadline_sweep = now + deadline_sweep;
            }
            if now >= next_idle_sweep {
                for lane in &mut self.lanes {
                    lane.pool.close_idle(now);
                    report_connections(&lane.pool.stats, &mut lane.reported, &mut self.out);
                }
                next_idle_sweep = now + IDLE_SWEEP;
            }
        }
        for lane in &mut self.lanes {
            lane.pool.close_all();
            report_connections(&lane.pool.stats, &mut lane.reported, &mut self.out);
        }
    }

    /// Starts the lane's next jobs while it is idle: skipped ones are reported, a job
    /// whose time has not come waits for it.
    fn start_next(&mut self, l: usize) {
        while matches!(self.lanes[l].state, State::Idle) {
            let Some(job) = self.lanes[l].queue.pop_front() else { return };
            self.queued -= 1;
            let Some(req) = admitted(&job.exchange, &self.config, &mut self.out) else { continue };
            if job.at > Instant::now() {
                self.paced.push(Reverse((job.at, l)));
                self.lanes[l].state = State::Paced(job);
                return;
            }
            let plan = Plan::new(&job.exchange, &req, &self.config, &mut self.out);
            self.begin(l, job, plan);
        }
    }

    /// A paced job whose time has come (its request was checked when it was queued).
    fn begin_paced(&mut self, l: usize, job: Job) {
        let req = crate::http::message::parse_request(&job.exchange.request).expect("checked by admitted");
        let plan = Plan::new(&job.exchange, &req, &self.config, &mut self.out);
        self.begin(l, job, plan);
    }

    fn begin(&mut self, l: usize, job: Job, plan: Plan) {
        let key = (job.exchange.connection.clone(), 0);
        self.lanes[l].state = State::Sending(Box::new(Sending { job, plan, key, io: None }));
        self.next_send(l);
    }

    /// Starts the lane's next send, or finishes its job when every send is answered
    /// (the lane is then idle).
    fn next_send(&mut self, l: usize) {
        let EventLoop { lanes, config, out, poll, .. } = self;
        let lane = &mut lanes[l];
        loop {
            let State::Sending(s) = &mut lane.state else { return };
            let Some(send) = s.plan.next() else {
                lane.state = State::Idle;
                report_connections(&lane.pool.stats, &mut lane.reported, out);
                return;
            };
            let request = match &send.request {
                Ok(request) => request,
                Err(refused) => {
                    let refused = Err(refused.clone());
                    s.plan.answered(&s.job.exchange, refused, config, out);
                    continue;
                }
            };
            let target = config.target(send.index);
            let now = Instant::now();
            s.key = (s.job.exchange.connection.clone(), send.index);
            match lane.pool.check_out(&s.key, now, |c| target::still_open(&c.stream)) {
                Checkout::Open(conn) => {
                    let mut exchange = Exchange::new(conn, request, now, config.timeout);
                    // Nothing can have come yet: no read before a readiness event.
                    match exchange.step(request, &mut [], false) {
                        Step::Waiting => s.io = Some(Io::Exchanging(exchange)),
                        Step::Done(result) => {
                            lane.pool.check_in(s.key.clone(), exchange.conn, matches!(result, Ok((_, true))), now);
                            s.plan.answered(&s.job.exchange, result.map(|(a, _)| a).map_err(|e| failure(&e)), config, out);
                            continue;
                        }
                    }
                }
                Checkout::New { reopening } => match connect(poll.registry(), Token(l), &target.addrs, 0, reopening, config.timeout) {
                    Ok(io) => s.io = Some(io),
                    Err(e) => {
                        s.plan.answered(&s.job.exchange, Err(failure(&SendError::Connect(e))), config, out);
                        continue;
                    }
                },
            }
            return;
        }
    }

    /// Moves the lane's current send on after a readiness event on one of its sockets.
    fn drive(&mut self, l: usize) {
        let EventLoop { lanes, config, poll, buf, out, .. } = self;
        let lane = &mut lanes[l];
        // Events of a paced or idle lane are of idle connections: looked at before use.
        let State::Sending(s) = &mut lane.state else { return };
        let Some(io) = s.io.take() else { return };
        let send = s.plan.next().expect("a send in progress");
        let request = send.request.as_ref().expect("only requests are sent");
        let (mut exchange, read) = match io {
            Io::Exchanging(exchange) => (exchange, true),
            Io::Connecting { stream, addr, reopening, deadline } => match connected(&stream) {
                Ok(false) => {
                    s.io = Some(Io::Connecting { stream, addr, reopening, deadline });
                    return;
                }
                Ok(true) => {
                    let _ = stream.set_nodelay(true);
                    lane.pool.opened(reopening);
                    let conn = Conn { stream, framer: target::response_framer() };
                    (Exchange::new(conn, request, Instant::now(), config.timeout), false)
                }
                Err(e) => {
                    drop(stream);
                    let target = config.target(send.index);
                    match connect(poll.registry(), Token(l), &target.addrs, addr + 1, reopening, config.timeout) {
                        Ok(io) => s.io = Some(io),
                        Err(next) => {
                            let last = if addr + 1 < target.addrs.len() { next } else { e };
                            s.plan.answered(&s.job.exchange, Err(failure(&SendError::Connect(last))), config, out);
                            self.after_send(l);
                        }
                    }
                    return;
                }
            },
        };
        match exchange.step(request, buf, read) {
            Step::Waiting => s.io = Some(Io::Exchanging(exchange)),
            Step::Done(result) => {
                lane.pool.check_in(s.key.clone(), exchange.conn, matches!(result, Ok((_, true))), exchange.began);
                s.plan.answered(&s.job.exchange, result.map(|(a, _)| a).map_err(|e| failure(&e)), config, out);
                self.after_send(l);
            }
        }
    }

    /// Fails the lane's current send if its deadline passed (nothing is re-sent).
    fn expire(&mut self, l: usize, now: Instant) {
        let EventLoop { lanes, config, poll, out, .. } = self;
        let lane = &mut lanes[l];
        let State::Sending(s) = &mut lane.state else { return };
        let timeout = config.timeout;
        let deadline = match &s.io {
            None => return,
            Some(Io::Connecting { deadline, .. } | Io::Exchanging(Exchange { deadline, .. })) => *deadline,
        };
        if now < deadline {
            return;
        }
        match s.io.take() {
            None => {}
            Some(Io::Connecting { addr, reopening, .. }) => {
                // As a blocking connect with this timeout would: the next address, if any.
                let target = config.target(s.plan.next().expect("a send in progress").index);
                match connect(poll.registry(), Token(l), &target.addrs, addr + 1, reopening, timeout) {
                    Ok(io) => s.io = Some(io),
                    Err(_) => {
                        s.plan.answered(&s.job.exchange, Err(failure(&SendError::Connect(ErrorKind::TimedOut.into()))), config, out);
                        self.after_send(l);
                    }
                }
            }
            Some(Io::Exchanging(exchange)) => {
                let whole = s.plan.next().and_then(|send| send.request.as_ref().ok()).map_or(0, |r| r.len());
                let error = if exchange.written == whole { SendError::ReadTimeout(timeout) } else { SendError::WriteTimeout(timeout) };
                lane.pool.check_in(s.key.clone(), exchange.conn, false, exchange.began);
                s.plan.answered(&s.job.exchange, Err(failure(&error)), config, out);
                self.after_send(l);
            }
        }
    }

    /// After a send is answered (or failed): the next one, or the lane's next job.
    fn after_send(&mut self, l: usize) {
        self.next_send(l);
        self.start_next(l);
    }
}

impl Exchange {
    /// Starts an exchange on `conn`: the framer pairs the response with `request` (a
    /// HEAD answer has no body).
    fn new(mut conn: Conn, request: &[u8], now: Instant, timeout: Duration) -> Exchange {
        let mut messages = Vec::new();
        conn.framer.on_data(Direction::ClientToServer, request, 0, &mut HttpStats::default(), &mut messages);
        messages.clear();
        let last_from = request.len() - request.len().min(LAST_WRITE);
        Exchange { conn, last_from, written: 0, started: None, first_byte: None, deadline: now + timeout, began: now, messages }
    }

    /// Writes what the socket takes, then, if `read`, reads what has arrived. The
    /// answer and whether the connection may be used again, once framed.
    fn step(&mut self, request: &[u8], buf: &mut [u8], read: bool) -> Step {
        while self.written < request.len() {
            if self.started.is_none() && self.written >= self.last_from {
                self.started = Some((Instant::now(), SystemTime::now()));
            }
            // The head and the last part are written apart, so the clock starts just
            // before the write of the last part whatever the socket takes at once.
            let end = if self.written < self.last_from { self.last_from } else { request.len() };
            match target::send_now(&self.conn.stream, &request[self.written..end]) {
                Ok(0) => return Step::Done(Err(SendError::Write(ErrorKind::WriteZero.into()))),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Step::Done(Err(SendError::Write(e))),
            }
        }
        if !read {
            return Step::Waiting;
        }
        let started = self.started.expect("set before the last write");
        let mut stats = HttpStats::default();
        loop {
            let read = match self.first_byte {
                // One byte first: its stamp is the first segment's.
                None => target::read_timestamped(&self.conn.stream, &mut buf[..1]),
                Some(_) => target::recv_now(&self.conn.stream, buf).map(|n| (n, None)),
            };
            let closed = match read {
                Ok((0, _)) => {
                    self.conn.framer.on_close(0, &mut stats, &mut self.messages);
                    true
                }
                Ok((n, stamp)) => {
                    if self.first_byte.is_none() {
                        self.first_byte = Some(target::waited_since(started, stamp));
                    }
                    self.conn.framer.on_data(Direction::ServerToClient, &buf[..n], 0, &mut stats, &mut self.messages);
                    false
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Step::Done(Err(SendError::Read(e))),
            };
            if let Some(i) = self.messages.iter().position(|m| m.kind == MessageKind::Response) {
                let response = self.messages.swap_remove(i);
                let waited = self.first_byte.unwrap_or_else(|| started.0.elapsed());
                return Step::Done(Ok(target::answer_of(&self.conn.stream, &self.conn.framer, response, waited, closed)));
            }
            if closed {
                return Step::Done(Err(SendError::Closed));
            }
        }
    }
}

/// Starts connecting to the first of `addrs[from..]` that takes a connect, registered
/// under `token`.
fn connect(registry: &Registry, token: Token, addrs: &[SocketAddr], from: usize, reopening: bool, timeout: Duration) -> std::io::Result<Io> {
    let mut last = None;
    for (addr, to) in addrs.iter().enumerate().skip(from) {
        let started = TcpStream::connect(*to).and_then(|mut stream| {
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match started {
            Ok(stream) => {
                target::enable_receive_timestamps(&stream);
                return Ok(Io::Connecting { stream, addr, reopening, deadline: Instant::now() + timeout });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ErrorKind::NotFound.into()))
}

/// Whether a connect finished: true when connected, false while in progress.
fn connected(stream: &TcpStream) -> std::io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{CompareSettings, ErrorKind as Kind, Outcome};
    use crate::replay::input::{CapturedResponse, Exchange as Captured};
    use crate::replay::request::RewriteOptions;
    use crate::replay::safety::{LocalAddresses, ProductionCheck};
    use crate::replay::target::Target;
    use crate::replay::{lane_of, Event, Pacing, SAFE_METHODS};
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::sync_channel;
    use std::sync::Mutex;

    use crate::replay::target::tests::server;

    /// Reads one request head (requests here have no body): its path.
    fn read_path(stream: &mut StdStream) -> Option<String> {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            match stream.read(&mut b) {
                Ok(1) => got.push(b[0]),
                _ => return None,
            }
        }
        String::from_utf8_lossy(&got).split(' ').nth(1).map(str::to_string)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n1\r\n}\r\n0\r\n\r\n";

    fn config(target: Target, timeout: Duration) -> ReplayConfig {
        ReplayConfig {
            targets: vec![target],
            baseline: None,
            pacing: Pacing::Max,
            max_wait: Duration::from_secs(10),
            allow_methods: SAFE_METHODS.iter().map(|m| m.to_string()).collect(),
            replay_ambiguous: false,
            rewrite: RewriteOptions { keep_host: false, mark: ("X-Capture-Replay".into(), "1".into()), set: vec![], drop: vec![] },
            concurrency: 1,
            timeout,
            compare: Some(CompareSettings::default()),
            production: ProductionCheck { local: LocalAddresses::new(vec![]), allow: false },
            keep_alive: KeepAlive::default(),
            threads: 1,
        }
    }

    /// Request `n` of captured connection `connection`, answered `OK` in production.
    fn job(connection: usize, n: usize, lanes: usize) -> Job {
        let connection = format!("c{connection}");
        let lane = lane_of(&connection, lanes);
        let response = CapturedResponse { bytes: OK.as_bytes().to_vec(), latency_ns: Some(1), cut: None, ambiguous: None, unpaired: false };
        let exchange = Captured {
            id: format!("{connection}-{n}"),
            connection: connection.into(),
            ts_ns: 1,
            request: format!("GET /{n} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            request_cut: None,
            request_ambiguous: None,
            response: Some(response),
            server: None,
        };
        Job { exchange, at: Instant::now(), lane }
    }

    /// Runs one thread of the sender over `lanes` lanes on `jobs`: the outcomes, in order.
    fn replay(config: ReplayConfig, lanes: usize, jobs: Vec<Job>) -> Vec<Outcome> {
        let pending = Arc::new(Mutex::new(Vec::new()));
        let (wake, _woken) = sync_channel(1);
        let out = Outbox { pending: pending.clone(), wake, closed: false };
        let (poll, _waker) = EventLoop::prepare().unwrap();
        let sender = EventLoop::new(poll, lanes, 1, Arc::new(config), KeepAlive::default(), out);
        let (tx, rx) = sync_channel(1);
        tx.send(jobs).unwrap();
        drop(tx);
        sender.run(rx);
        let events = std::mem::take(&mut *pending.lock().unwrap());
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::Outcome(o) => Some(*o),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_answer_in_pieces_is_read_until_framed_whole() {
        let (target, _) = server(|mut s| {
            while read_path(&mut s).is_some() {
                // Head, then each chunk, apart: several readiness events per answer.
                for piece in OK.split_inclusive("\r\n") {
                    let _ = s.write_all(piece.as_bytes());
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        let outcomes = replay(config(target, Duration::from_secs(10)), 1, (0..3).map(|n| job(0, n, 1)).collect());
        assert_eq!(outcomes.len(), 3);
        for o in &outcomes {
            assert!(o.error.is_none() && o.differences.is_empty(), "{o:?}");
            assert_eq!(o.candidate_status, Some(200), "{o:?}");
        }
    }

    /// A request whose head one write took past the start of its last part (a 5 MB
    /// upload) left the latency clock unset and panicked the sender thread.
    #[test]
    fn a_large_upload_panicked_the_sender() {
        const BODY: usize = 3_000_000;
        let received = Arc::new(AtomicUsize::new(0));
        let seen = received.clone();
        let (target, _) = server(move |mut s| {
            while let Some(path) = read_path(&mut s) {
                let mut body = vec![0u8; if path == "/up" { BODY } else { 0 }];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                seen.fetch_add(body.iter().filter(|&&b| b == b'u').count(), Ordering::SeqCst);
                let _ = s.write_all(OK.as_bytes());
            }
        });
        let mut cfg = config(target, Duration::from_secs(20));
        cfg.allow_methods.push("POST".into());
        let mut upload = job(0, 0, 1);
        let mut request = format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
        request.resize(request.len() + BODY, b'u');
        upload.exchange.request = request;
        let outcomes = replay(cfg, 1, vec![upload, job(0, 1, 1)]);
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|o| o.error.is_none() && o.differences.is_empty() && o.candidate_latency_ms.is_some()), "{outcomes:?}");
        assert_eq!(received.load(Ordering::SeqCst), BODY, "the body sent once, whole");
    }

    #[test]
    fn a_target_that_closes_mid_answer_is_an_error_and_nothing_is_resent() {
        let received = Arc::new(AtomicUsize::new(0));
        let seen = received.clone();
        let (target, accepted) = server(move |mut s| {
            if read_path(&mut s).is_some() {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(&OK.as_bytes()[..OK.len() - 12]);
            }
        });
        let outcomes = replay(config(target, Duration::from_secs(10)), 1, (0..2).map(|n| job(0, n, 1)).collect());
        let kinds: Vec<_> = outcomes.iter().map(|o| o.error.as_ref().map(|e| e.kind)).collect();
        assert_eq!(kinds, [Some(Kind::Closed), Some(Kind::Closed)]);
        assert_eq!((received.load(Ordering::SeqCst), accepted.load(Ordering::SeqCst)), (2, 2), "each request sent once, on a new connection");
    }

    #[test]
    fn a_target_that_never_answers_times_out_and_nothing_is_resent() {
        let received = Arc::new(AtomicUsize::new(0));
        let seen = received.clone();
        let (target, accepted) = server(move |mut s| {
            while read_path(&mut s).is_some() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Two captured connections on two lanes, two requests each.
        let jobs = [(0, 0), (1, 0), (0, 1), (1, 1)].into_iter().map(|(c, n)| job(c, n, 2)).collect();
        let outcomes = replay(config(target, Duration::from_millis(300)), 2, jobs);
        assert_eq!(outcomes.len(), 4);
        assert!(outcomes.iter().all(|o| o.error.as_ref().is_some_and(|e| e.kind == Kind::ReadTimeout)), "{outcomes:?}");
        // The server still holds every connection open: anything re-sent would be counted.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!((received.load(Ordering::SeqCst), accepted.load(Ordering::SeqCst)), (4, 4), "each request sent once; a timed-out connection is not reused");
    }

    #[test]
    fn many_connections_keep_their_order_on_fewer_lanes() {
        const CONNECTIONS: usize = 24;
        const PER_CONNECTION: usize = 20;
        let seen: Arc<Mutex<Vec<Arc<Mutex<Vec<String>>>>>> = Arc::default();
        let all = seen.clone();
        let (target, _) = server(move |mut s| {
            let paths = Arc::new(Mutex::new(Vec::new()));
            all.lock().unwrap().push(paths.clone());
            while let Some(path) = read_path(&mut s) {
                paths.lock().unwrap().push(path);
                let _ = s.write_all(OK.as_bytes());
            }
        });
        let lanes = 5;
        // Captured order: the connections' requests interleaved.
        let jobs = (0..PER_CONNECTION).flat_map(|n| (0..CONNECTIONS).map(move |c| (c, n))).map(|(c, n)| job(c, n, lanes)).collect();
        let outcomes = replay(config(target, Duration::from_secs(10)), lanes, jobs);
        assert_eq!(outcomes.len(), CONNECTIONS * PER_CONNECTION);
        assert!(outcomes.iter().all(|o| o.error.is_none() && o.differences.is_empty()));
        for c in 0..CONNECTIONS {
            let ids: Vec<String> = outcomes.iter().filter(|o| o.id.starts_with(&format!("c{c}-"))).map(|o| o.id.clone()).collect();
            assert_eq!(ids, (0..PER_CONNECTION).map(|n| format!("c{c}-{n}")).collect::<Vec<_>>(), "outcomes of a captured connection in order");
        }
        let per_connection: Vec<Vec<String>> = seen.lock().unwrap().iter().map(|p| p.lock().unwrap().clone()).collect();
        assert_eq!(per_connection.len(), CONNECTIONS, "one target connection per captured connection");
        for paths in per_connection {
            assert_eq!(paths, (0..PER_CONNECTION).map(|n| format!("/{n}")).collect::<Vec<_>>(), "a connection's requests, in order, once each");
        }
    }
}
