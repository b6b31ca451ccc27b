//! One probe of one region: the only part of health that does IO.
//!
//! Owns: turning a region's `upstream` URL and probe config into a verdict. HTTP probes send a
//! small hand-written HTTP/1.1 `GET` (a probe needs a status line, not an HTTP client) and
//! compare the status with the healthy ranges; TCP probes only connect. Every failure becomes
//! a [`ProbeOutcome`] with a readable error, never a panic or an `Err` the caller must handle.
//!
//! Does not own: thresholds ([`super::state`]) or scheduling ([`super::monitor`]). Not yet
//! here: TLS. An `https://` upstream fails its probe with a clear error until Berth has a TLS
//! client (the proxy brings rustls; the probe should use the same roots and settings).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::state::ProbeOutcome;
use crate::config::{ProbeKind, Region, UpstreamUrl};

/// Headers longer than this are not a registry's `/v2/` answer; stop reading rather than buffer.
const MAX_HEAD: usize = 16 * 1024;
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
    #[error("https probes are not supported yet (upstream {url})")]
    HttpsUnsupported { url: String },
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
    #[error("GET {url}")]
    Exchange {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("GET {url}: the answer does not start with an HTTP/1 status line: {line:?}")]
    BadStatusLine { url: String, line: String },
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
            if upstream.tls {
                return Err(ProbeError::HttpsUnsupported {
                    url: url.to_string(),
                });
            }
            let path = format!("{}{}", upstream.path, region.probe.path);
            let full = join_url(url, &region.probe.path);
            let status = http_get(&upstream, &path, &full).await?;
            let healthy = region
                .probe
                .healthy_status
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&status));
            if healthy {
                Ok(Some(status))
            } else {
                Err(ProbeError::Status { url: full, status })
            }
        }
    }
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

/// Send `GET path` and return the status code of the answer.
async fn http_get(u: &UpstreamUrl, path: &str, url: &str) -> Result<u16, ProbeError> {
    let mut stream = connect(u).await?;
    let io_err = |source| ProbeError::Exchange {
        url: url.to_string(),
        source,
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: berth-probe\r\nAccept: */*\r\n\r\n",
        u.authority
    );
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;

    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break Some(i + 4);
        }
        if buf.len() >= MAX_HEAD {
            break None;
        }
        let n = read_some(&mut stream, &mut buf).await.map_err(io_err)?;
        if n == 0 {
            break None;
        }
    };
    let line_end = find(&buf, b"\r\n").unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    let status = parse_status_line(&line).ok_or_else(|| ProbeError::BadStatusLine {
        url: url.to_string(),
        line: line.chars().take(80).collect(),
    })?;

    // Best effort: a failure here says nothing about the status we already have.
    if let Some(head_end) = head_end {
        let head = String::from_utf8_lossy(&buf[..head_end]);
        if let Some(len) = content_length(&head).filter(|&l| l <= MAX_DRAIN) {
            while buf.len() < head_end + len {
                match read_some(&mut stream, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }
    Ok(status)
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// "HTTP/1.1 200 OK" -> 200.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=999).contains(c))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProbeConfig;
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
                while find(&buf, b"\r\n\r\n").is_none() {
                    if read_some(&mut s, &mut buf).await.unwrap() == 0 {
                        break;
                    }
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
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 401"), Some(401));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
        assert_eq!(
            content_length("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"),
            Some(2)
        );
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
        assert_eq!(
            out.error.as_deref(),
            Some(
                format!(
                    "GET http://{addr}/v2/: the answer does not start with an HTTP/1 status line: \"SSH-2.0-OpenSSH_9.2\""
                )
                .as_str()
            )
        );
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
        let out = probe(&region(Some("https://127.0.0.1:1"), ProbeKind::Http)).await;
        assert_eq!(
            out.error.as_deref(),
            Some("https probes are not supported yet (upstream https://127.0.0.1:1)")
        );
        // Generous timeout: a slow resolver should still give the resolve error.
        let mut r = region(Some("http://no-such-host.invalid:5000"), ProbeKind::Tcp);
        r.probe.timeout = Duration::from_secs(10);
        let e = probe(&r).await.error.unwrap();
        assert!(e.starts_with("resolve no-such-host.invalid: "), "{e}");
    }
}
