//! TLS for `https://` targets (rustls): the client configuration from `--insecure` and
//! `--ca-file`, and the stream a target connection reads and writes, plain or TLS.
//!
//! The target code keeps using the TCP socket underneath for what only the kernel
//! knows (idle-close checks, receive timestamps, round-trip time); TLS sits between
//! it and the request and response bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};

/// How `https://` targets are trusted.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Accept any certificate (self-signed candidates): the connection is encrypted
    /// but the target is not authenticated.
    pub insecure: bool,
    /// Trust the certificates in this PEM file (instead of the system's roots).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file cannot be read or holds no usable certificate.
    #[error("--ca-file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    /// No trusted root at all (no --ca-file, and none found on the system).
    #[error("no trusted root certificates found on this system ({0}): give --ca-file or --insecure")]
    NoRoots(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca_file_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    let err = |detail: String| TlsSetupError::CaFile { path: path.to_path_buf(), detail };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?.collect::<Result<_, _>>().map_err(|e| err(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(err("no usable certificate in the file".into()));
    }
    Ok(roots)
}

/// The client configuration for every `https://` target of a run.
pub fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = if options.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider()))).with_no_client_auth()
    } else {
        let roots = match &options.ca_file {
            Some(path) => ca_file_roots(path)?,
            None => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(TlsSetupError::NoRoots(found.errors.first().map(|e| e.to_string()).unwrap_or_else(|| "none".into())));
                }
                roots
            }
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is accepted; signatures are still checked so the
/// handshake is a real one.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TCP socket under TLS, remembering the kernel's receive stamp of the first read
/// after [`StampedTcp::start_stamping`] (the response's first TLS record).
pub struct StampedTcp {
    pub tcp: TcpStream,
    stamping: bool,
    stamp: Option<SystemTime>,
}

impl Read for StampedTcp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.stamping {
            return self.tcp.read(buf);
        }
        let (n, stamp) = super::target::read_timestamped(&self.tcp, buf)?;
        if n > 0 {
            self.stamping = false;
            self.stamp = stamp;
        }
        Ok(n)
    }
}

impl Write for StampedTcp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// A target connection's byte stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, StampedTcp>>),
}

impl Stream {
    /// The TCP socket (plain, or under TLS).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock.tcp,
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => {
                let n = s.write(buf)?;
                s.flush()?;
                Ok(n)
            }
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }

    /// Reads the response's first bytes with the kernel's arrival time of the data
    /// that carried them, when it gave one.
    pub fn read_first(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, Option<SystemTime>)> {
        match self {
            Stream::Plain(s) => super::target::read_timestamped(s, buf),
            Stream::Tls(s) => {
                s.sock.stamping = true;
                s.sock.stamp = None;
                let n = s.read(buf)?;
                s.sock.stamping = false;
                Ok((n, s.sock.stamp.take()))
            }
        }
    }

    /// Whether an idle connection can take a request: open, and nothing unasked
    /// waiting (TLS: no plaintext and no close or alert buffered either).
    pub fn still_open(&mut self) -> bool {
        if let Stream::Tls(s) = self {
            match s.conn.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
                _ => return false,
            }
        }
        super::target::still_open(self.tcp())
    }
}

/// Runs the TLS handshake over `tcp` with `host` as the server name (SNI when it is a
/// DNS name), within `timeout`.
pub fn handshake(tcp: TcpStream, config: Arc<ClientConfig>, host: &str, timeout: Duration) -> std::io::Result<Stream> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, format!("server name {host:?}: {e}")))?;
    let conn = ClientConnection::new(config, name).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
    let mut stream = StreamOwned::new(conn, StampedTcp { tcp, stamping: false, stamp: None });
    let deadline = Instant::now() + timeout;
    while stream.conn.is_handshaking() {
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or(ErrorKind::TimedOut)?;
        stream.sock.tcp.set_read_timeout(Some(left))?;
        stream.sock.tcp.set_write_timeout(Some(left))?;
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(Stream::Tls(Box::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_are_checked() {
        let err = client_config(&TlsOptions { insecure: false, ca_file: Some("/nonexistent/ca.pem".into()) }).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let empty = std::env::temp_dir().join(format!("capture-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&TlsOptions { insecure: false, ca_file: Some(empty.clone()) }).unwrap_err();
        assert!(err.to_string().contains("no usable certificate"), "{err}");
        let _ = std::fs::remove_file(&empty);
        assert!(client_config(&TlsOptions { insecure: true, ca_file: None }).is_ok());
    }
}
