//! One probe of one region: the only part of health that does IO.
//!
//! Owns: turning a region's `upstream` URL and probe config into a verdict. HTTP probes send
//! one `GET` through hyper's HTTP/1.1 client (the hyper the admin API and the proxy already
//! build on) over a fresh connection, TLS through rustls for `https://` upstreams, verified
//! against `probe.ca_file` (which defaults to `proxy.upstream_ca_file`) or the system roots,
//! and compare the status with the healthy ranges; TCP probes only connect. Every failure
//! becomes a [`ProbeOutcome`] with a readable error, never a panic or an `Err` the caller must
//! handle.
//!
//! A fresh connection per probe, no pool: a probe must see what a new client would (name
//! resolution, TCP connect, TLS handshake and certificate), not reuse a connection that
//! predates a failure.
//!
//! Does not own: thresholds ([`super::state`]) or scheduling ([`super::monitor`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::state::ProbeOutcome;
use crate::config::{ProbeKind, Region, UpstreamUrl};

/// A body up to this size is read to the end so the connection closes cleanly on both sides
/// (closing with unread data makes the kernel reset it, and the registry logs an error).
const MAX_DRAIN: usize = 64 * 1024;

/// Why a probe failed. Rendered with its causes into [`ProbeOutcome::error`].
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("region {region} has no upstream to probe")]
    NoUpstream { region: String },
    #[error("upstream {url:?} is not a URL such as \"http://127.0.0.1:5001\"")]
    BadUpstream { url: String },
    #[error("resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("probe ca_file {}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("probe ca_file {} holds no usable certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("the system's root certificates cannot be loaded (install ca-certificates, or set probe.ca_file): {0}")]
    SystemRoots(String),
    #[error("TLS settings")]
    TlsSettings(#[source] rustls::Error),
    #[error("{name:?} is not a TLS server name (set probe.host)")]
    ServerName { name: String },
    #[error("TLS handshake with {authority} for server name {name}")]
    Tls {
        authority: String,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("GET {url}")]
    Request {
        url: String,
        #[source]
        source: http::Error,
    },
    #[error("GET {url}")]
    Exchange {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("GET {url} returned {status}")]
    Status { url: String, status: u16 },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
}

/// Something that probes a region. The monitor takes one so tests can script outcomes; Berth
/// uses [`NetworkProber`].
pub trait Prober: Send + Sync + 'static {
    /// Probe `region` once. Must finish on its own (the network prober bounds itself by the
    /// region's probe timeout) and report failures in the outcome.
    fn probe<'a>(
        &'a self,
        region: &'a Region,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>>;
}

/// The real prober: [`probe`] over the network.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkProber;

impl Prober for NetworkProber {
    fn probe<'a>(
        &'a self,
        region: &'a Region,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>> {
        Box::pin(probe(region))
    }
}

/// Probe `region` once, bounded by its probe timeout.
pub async fn probe(region: &Region) -> ProbeOutcome {
    let start = Instant::now();
    let timeout = region.probe.timeout;
    let result = match tokio::time::timeout(timeout, check(region)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout {
            what: describe(region),
            after: timeout,
        }),
    };
    let latency = start.elapsed();
    match result {
        Ok(status) => ProbeOutcome::success(latency, status),
        Err(e) => {
            let status = match &e {
                ProbeError::Status { status, .. } => Some(*status),
                _ => None,
            };
            ProbeOutcome::failure(latency, crate::report(&e), status)
        }
    }
}

/// "GET http://h:p/v2/" or "connect to h:p": what a timeout message says timed out.
fn describe(region: &Region) -> String {
    let upstream = region.upstream.as_deref().unwrap_or("(no upstream)");
    match region.probe.kind {
        ProbeKind::Http => format!("GET {}", join_url(upstream, &region.probe.path)),
        ProbeKind::Tcp => match parse_upstream(upstream) {
            Ok(u) => format!("connect to {}", u.authority),
            Err(_) => format!("connect to {upstream}"),
        },
    }
}

fn join_url(upstream: &str, path: &str) -> String {
    format!("{}{}", upstream.trim_end_matches('/'), path)
}

/// The probe without its timeout: `Ok(status)` (None for TCP) or why it failed.
async fn check(region: &Region) -> Result<Option<u16>, ProbeError> {
    let url = region
        .upstream
        .as_deref()
        .ok_or_else(|| ProbeError::NoUpstream {
            region: region.name.clone(),
        })?;
    let upstream = parse_upstream(url)?;
    match region.probe.kind {
        ProbeKind::Tcp => {
            connect(&upstream).await?;
            Ok(None)
        }
        ProbeKind::Http => {
            let full = join_url(url, &region.probe.path);
            let status = http_get(region, &upstream, &full).await?;
            if status_is_healthy(&region.probe.healthy_status, status) {
                Ok(Some(status))
            } else {
                Err(ProbeError::Status { url: full, status })
            }
        }
    }
}

/// Whether `status` falls in one of the inclusive `ranges`.
fn status_is_healthy(ranges: &[(u16, u16)], status: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
}

/// The region's upstream parsed by the config's one URL parser, or the probe's error.
fn parse_upstream(url: &str) -> Result<UpstreamUrl, ProbeError> {
    UpstreamUrl::parse(url).ok_or_else(|| ProbeError::BadUpstream {
        url: url.to_string(),
    })
}

/// Resolve and connect, trying each address in turn; the last error if none answers.
async fn connect(u: &UpstreamUrl) -> Result<TcpStream, ProbeError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((u.host.as_str(), u.port))
        .await
        .map_err(|source| ProbeError::Resolve {
            host: u.host.clone(),
            source,
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(source) => last = Some(ProbeError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| ProbeError::NoAddress {
        host: u.host.clone(),
    }))
}

/// The `Host` header: `probe.host` if set, else the upstream's `host[:port]` as written.
fn host_header<'a>(region: &'a Region, u: &'a UpstreamUrl) -> &'a str {
    region.probe.host.as_deref().unwrap_or(&u.authority)
}

/// The TLS server name: `probe.host` without its port (and brackets), else the upstream's host.
fn server_name<'a>(region: &'a Region, u: &'a UpstreamUrl) -> &'a str {
    match region.probe.host.as_deref() {
        Some(h) => {
            let name = match h.rsplit_once(':') {
                Some((n, port))
                    if port.parse::<u16>().is_ok() && (!n.contains(':') || n.ends_with(']')) =>
                {
                    n
                }
                _ => h,
            };
            name.trim_start_matches('[').trim_end_matches(']')
        }
        None => &u.host,
    }
}

/// Send `GET` of the probe path (over TLS for `https://`) and return the answer's status.
async fn http_get(region: &Region, u: &UpstreamUrl, url: &str) -> Result<u16, ProbeError> {
    let stream = connect(u).await?;
    let path = format!("{}{}", u.path, region.probe.path);
    let request = http::Request::get(path)
        .header(http::header::HOST, host_header(region, u))
        .header(http::header::USER_AGENT, "berth-probe")
        .header(http::header::CONNECTION, "close")
        .header(http::header::ACCEPT, "*/*")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|source| ProbeError::Request {
            url: url.to_string(),
            source,
        })?;
    if !u.tls {
        return exchange(stream, request, url).await;
    }
    let config = tls_config(region.probe.ca_file.as_deref())?;
    let name = server_name(region, u);
    let server = ServerName::try_from(name.to_string()).map_err(|_| ProbeError::ServerName {
        name: name.to_string(),
    })?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server, stream)
        .await
        .map_err(|source| ProbeError::Tls {
            authority: u.authority.clone(),
            name: name.to_string(),
            source,
        })?;
    exchange(tls, request, url).await
}

/// One request and its answer on `io`: the status, the body read up to [`MAX_DRAIN`].
async fn exchange<S>(
    io: S,
    request: http::Request<Empty<bytes::Bytes>>,
    url: &str,
) -> Result<u16, ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let err = |source| ProbeError::Exchange {
        url: url.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(err)?;
    let answer = async {
        let response = sender.send_request(request).await.map_err(err)?;
        let status = response.status().as_u16();
        // Best effort: a failure here says nothing about the status we already have.
        let mut body = response.into_body();
        let mut read = 0;
        while read <= MAX_DRAIN {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        Ok(status)
    };
    // The connection is driven here, not spawned: the probe's timeout drops both at once.
    tokio::pin!(answer, conn);
    tokio::select! {
        biased;
        status = &mut answer => status,
        ended = &mut conn => match ended {
            // Closed after the answer was delivered: the answer is ready to read.
            Ok(()) => answer.await,
            Err(e) => Err(err(e)),
        },
    }
}

/// Client settings for one probe: the roots of `ca_file`, else the system's (loaded once per
/// process; a CA file is read at each probe so a renewed one counts without a reload).
/// Replication's registry clients use it too, so they trust what the probe trusts.
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ProbeError> {
    static SYSTEM: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    match ca_file {
        Some(path) => client_config(file_roots(path)?),
        None => SYSTEM
            .get_or_init(|| {
                let roots = system_roots().map_err(|e| e.to_string())?;
                client_config(roots).map_err(|e| crate::report(&e))
            })
            .clone()
            .map_err(ProbeError::SystemRoots),
    }
}

fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, ProbeError> {
    // ring: the provider pingora's rustls is built with; no second crypto library.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ProbeError::TlsSettings)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn file_roots(path: &Path) -> Result<rustls::RootCertStore, ProbeError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ProbeError::CaFile {
            path: path.to_path_buf(),
            source,
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ProbeError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// The system's trust store (honours `SSL_CERT_FILE` and `SSL_CERT_DIR`, as the proxy does).
fn system_roots() -> Result<rustls::RootCertStore, io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs()?);
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProbeConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn region(upstream: Option<&str>, kind: ProbeKind) -> Region {
        Region {
            name: "westus".to_string(),
            latitude: 0.0,
            longitude: 0.0,
            a: vec![],
            aaaa: vec![],
            cname: None,
            upstream: upstream.map(str::to_string),
            probe: ProbeConfig {
                kind,
                timeout: Duration::from_millis(500),
                ..ProbeConfig::default()
            },
        }
    }

    /// A one-connection-at-a-time server that reads a request head and answers `reply`, or
    /// never answers when `reply` is None. Returns its address.
    async fn serve(reply: Option<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                match reply {
                    Some(r) => s.write_all(r.as_bytes()).await.unwrap(),
                    // Hold the connection open without answering.
                    None => std::future::pending::<()>().await,
                }
            }
        });
        addr
    }

    #[test]
    fn upstream_urls() {
        let u = parse_upstream("http://127.0.0.1:5001").unwrap();
        assert_eq!(
            u,
            UpstreamUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 5001,
                authority: "127.0.0.1:5001".into(),
                path: String::new(),
            }
        );
        let u = parse_upstream("https://[::1]/mirror/").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "::1", 443));
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("[::1]", "/mirror")
        );
        let u = parse_upstream("http://registry.example.test").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("registry.example.test", 80));
        for bad in [
            "ftp://x",
            "http://",
            "http://:80",
            "http://h:port",
            "http://[::1",
            "http://u@h",
        ] {
            let e = parse_upstream(bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("upstream {bad:?} is not a URL such as \"http://127.0.0.1:5001\"")
            );
        }
    }

    #[test]
    fn status_ranges_and_names() {
        let default = ProbeConfig::default().healthy_status;
        assert!(status_is_healthy(&default, 200));
        assert!(status_is_healthy(&default, 401));
        assert!(!status_is_healthy(&default, 204));
        assert!(status_is_healthy(&[(200, 299)], 204));
        let u = parse_upstream("https://10.0.0.5:5443").unwrap();
        let mut r = region(Some("https://10.0.0.5:5443"), ProbeKind::Http);
        assert_eq!(
            (host_header(&r, &u), server_name(&r, &u)),
            ("10.0.0.5:5443", "10.0.0.5")
        );
        for (host, name) in [
            ("registry.example.com", "registry.example.com"),
            ("registry.example.com:5443", "registry.example.com"),
            ("[::1]:5443", "::1"),
            ("::1", "::1"),
        ] {
            r.probe.host = Some(host.to_string());
            assert_eq!((host_header(&r, &u), server_name(&r, &u)), (host, name));
        }
    }

    #[tokio::test]
    async fn healthy_and_unhealthy_statuses() {
        let ok = serve(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")).await;
        let unauthorized = serve(Some(
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let unavailable = serve(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;

        let out = probe(&region(Some(&format!("http://{ok}")), ProbeKind::Http)).await;
        assert_eq!((out.ok, out.status, out.error), (true, Some(200), None));

        // 401 is what a registry with auth answers: healthy by default.
        let out = probe(&region(
            Some(&format!("http://{unauthorized}")),
            ProbeKind::Http,
        ))
        .await;
        assert_eq!((out.ok, out.status), (true, Some(401)));

        let out = probe(&region(
            Some(&format!("http://{unavailable}")),
            ProbeKind::Http,
        ))
        .await;
        assert_eq!((out.ok, out.status), (false, Some(503)));
        assert_eq!(
            out.error.as_deref(),
            Some(format!("GET http://{unavailable}/v2/ returned 503").as_str())
        );

        // Configured ranges replace the default.
        let mut r = region(Some(&format!("http://{unavailable}")), ProbeKind::Http);
        r.probe.healthy_status = vec![(500, 599)];
        assert!(probe(&r).await.ok);
        r.upstream = Some(format!("http://{ok}"));
        assert!(!probe(&r).await.ok);
    }

    #[tokio::test]
    async fn not_http() {
        let addr = serve(Some("SSH-2.0-OpenSSH_9.2\r\n\r\n")).await;
        let out = probe(&region(Some(&format!("http://{addr}")), ProbeKind::Http)).await;
        assert!(!out.ok);
        let e = out.error.unwrap();
        assert!(e.starts_with(&format!("GET http://{addr}/v2/: ")), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout() {
        let addr = serve(None).await;
        let out = probe(&region(Some(&format!("http://{addr}")), ProbeKind::Http)).await;
        assert!(!out.ok);
        assert_eq!(
            out.error.as_deref(),
            Some(format!("GET http://{addr}/v2/ timed out after 500ms").as_str())
        );
        assert_eq!(out.latency, Duration::from_millis(500));
    }

    #[tokio::test]
    async fn tcp_and_refused() {
        let addr = serve(None).await;
        let out = probe(&region(Some(&format!("http://{addr}")), ProbeKind::Tcp)).await;
        assert_eq!((out.ok, out.status, out.error), (true, None, None));
        // Names resolve; each address is tried in turn (localhost may give ::1 first).
        let by_name = format!("http://localhost:{}", addr.port());
        assert!(probe(&region(Some(&by_name), ProbeKind::Tcp)).await.ok);

        // A port nobody listens on: bind one, then let it go.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        for kind in [ProbeKind::Tcp, ProbeKind::Http] {
            let out = probe(&region(Some(&format!("http://{closed}")), kind)).await;
            assert!(!out.ok);
            let e = out.error.unwrap();
            assert!(
                e.starts_with(&format!("connect to {closed}: ")) && e.contains("refused"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn configuration_problems() {
        let out = probe(&region(None, ProbeKind::Http)).await;
        assert_eq!(
            out.error.as_deref(),
            Some("region westus has no upstream to probe")
        );
        // A CA file that went away since the config was loaded.
        let mut r = region(
            Some(&format!("https://{}", serve(None).await)),
            ProbeKind::Http,
        );
        r.probe.ca_file = Some("/nonexistent/ca.pem".into());
        let e = probe(&r).await.error.unwrap();
        assert!(e.starts_with("probe ca_file /nonexistent/ca.pem: "), "{e}");
        // Generous timeout: a slow resolver should still give the resolve error.
        let mut r = region(Some("http://no-such-host.invalid:5000"), ProbeKind::Tcp);
        r.probe.timeout = Duration::from_secs(10);
        let e = probe(&r).await.error.unwrap();
        assert!(e.starts_with("resolve no-such-host.invalid: "), "{e}");
    }
}
