//! The HTTP endpoint: a one-thread tokio runtime running hyper, bounded in
//! connections and time so a misbehaving scraper cannot hold the process's resources.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use log::warn;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, Semaphore};

use super::Health;

/// Connections served at once; more are closed at once (scrapers and probes retry).
const MAX_CONNECTIONS: usize = 8;
/// Time a connection may take from accept to the end of its response.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listening socket could not be bound (address in use, not local, ...).
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server thread or its runtime could not be started.
    #[error("starting the metrics server")]
    Start(#[source] std::io::Error),
}

/// The running server; dropping it stops the server thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// The address actually bound (the port is known even when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct State {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// Binds `addr` now (so a port in use fails at start) and serves `/metrics` from
/// `registry`, `/healthz` and `/readyz` from `health` on a thread of its own.
pub fn serve(addr: SocketAddr, registry: Arc<Registry>, health: Arc<Health>) -> Result<MetricsServer, MetricsError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(MetricsError::Start)?;
    listener.set_nonblocking(true).map_err(MetricsError::Start)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(MetricsError::Start)?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let state = Arc::new(State { registry, health });
    let thread = std::thread::Builder::new()
        .name("capture-metrics".into())
        .spawn(move || runtime.block_on(accept_loop(listener, state, stop_rx)))
        .map_err(MetricsError::Start)?;
    Ok(MetricsServer { addr: local, stop: Some(stop_tx), thread: Some(thread) })
}

async fn accept_loop(listener: std::net::TcpListener, state: Arc<State>, mut stop: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!("metrics server: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accept_error_logged = false;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: log once, back off, keep serving.
                    if !accept_error_logged {
                        warn!("metrics server: accept: {e} (repeats are not logged)");
                        accept_error_logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = respond(req.method(), req.uri().path(), &state);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

fn respond(method: &Method, path: &str, state: &State) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match path {
        "/metrics" => {
            let mut body = String::with_capacity(16 * 1024);
            if let Err(e) = prometheus_text::encode(&mut body, &state.registry) {
                return text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n"));
            }
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            );
            response
        }
        "/healthz" => match state.health.stalled_for() {
            None => text(StatusCode::OK, "ok\n".into()),
            Some(d) => text(StatusCode::SERVICE_UNAVAILABLE, format!("stalled: no progress for {:.1} s\n", d.as_secs_f64())),
        },
        "/readyz" => match state.health.is_ready() {
            true => text(StatusCode::OK, "ready\n".into()),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: /metrics, /healthz or /readyz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A plain HTTP/1.0 GET with std's TcpStream: status code and body.
    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let status = reply.split(' ').nth(1).unwrap().parse().unwrap();
        let body = reply.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("test_events", "Events seen by the test", counter.clone());
        counter.inc_by(7);
        let health = Arc::new(Health::new(Duration::from_secs(3600)));
        let server = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry), health.clone()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("# TYPE test_events_total counter\ntest_events_total 7\n"), "{body}");
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".into()));
        assert_eq!(get(addr, "/readyz"), (503, "not ready\n".into()));
        health.set_ready(true);
        assert_eq!(get(addr, "/readyz"), (200, "ready\n".into()));
        assert_eq!(get(addr, "/nope").0, 404);

        drop(server);
        assert!(std::net::TcpStream::connect(addr).is_err(), "the port is closed once the server is dropped");
    }

    #[test]
    fn reports_stalled_progress_as_unhealthy() {
        let health = Arc::new(Health::new(Duration::from_millis(1)));
        let server = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Registry::default()), health).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let (status, body) = get(server.local_addr(), "/healthz");
        assert_eq!(status, 503);
        assert!(body.starts_with("stalled: no progress for "), "{body}");
    }

    #[test]
    fn a_port_in_use_is_a_bind_error_naming_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, Arc::new(Registry::default()), Arc::new(Health::new(Duration::from_secs(1)))).err().unwrap();
        assert!(matches!(err, MetricsError::Bind { .. }), "{err:?}");
        // As the binary prints it: the address, then the cause.
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(message.contains(&addr.to_string()) && message.contains("in use"), "{message}");
    }
}
