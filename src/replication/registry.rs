//! The registry client replication uses: the OCI distribution API of one region's replica,
//! with its credentials (basic, or a bearer token from the `WWW-Authenticate` realm). This is
//! IO; what to call in which order is `copy`'s business.
//!
//! Credentials are never logged: errors carry status codes and registry error codes only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use reqwest::{header, Method, Response, StatusCode};

pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How long an exchange with a registry may move no bytes before it fails (and the job is
/// retried): waiting for an answer, for the next chunk of a body, or for the destination to
/// take the next chunk of a blob.
const STALL: Duration = Duration::from_secs(120);

/// The `User-Agent` of every request replication makes.
pub const USER_AGENT: &str = concat!("berth-replication/", env!("CARGO_PKG_VERSION"));

/// Why a request to a registry did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{region}: {what}: {source}")]
    Http {
        region: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{region}: {what}: status {status}{detail}")]
    Status {
        region: String,
        what: String,
        status: u16,
        /// The registry's error code(s), never its whole body.
        detail: String,
    },
    #[error("{region}: {what}: {message}")]
    Other {
        region: String,
        what: String,
        message: String,
    },
}

/// The HTTP clients of the registries that trust one set of CAs.
#[derive(Clone, Debug)]
pub struct Http {
    /// Every request but a blob's upload: reqwest's read timeout ends a request whose answer
    /// or next body chunk takes longer than the stall time.
    api: reqwest::Client,
    /// A blob's upload. reqwest's read timeout runs from the moment a request is sent until
    /// its answer, whose head a registry sends only once it has the whole blob: a copy of
    /// more than the stall time's worth of bytes would always fail. [`Registry::put_blob`]
    /// watches the bytes move instead.
    upload: reqwest::Client,
    stall: Duration,
}

impl Http {
    /// The client for plain requests (the webhooks use it too).
    pub fn api(&self) -> &reqwest::Client {
        &self.api
    }
}

/// A region's registry.
pub struct Registry {
    pub region: String,
    http: Http,
    /// The upstream URL without a trailing '/'.
    base: String,
    /// (username, password), read once at start.
    credential: Option<(String, String)>,
    /// The `Authorization` values that worked, by [`scope_key`]: a bearer token is scoped to
    /// a repository, so concurrent jobs for different repositories each keep theirs. Basic
    /// auth is kept under the empty key, which every request falls back to.
    auth: Mutex<HashMap<String, String>>,
}

/// A blob download in progress: its length and its body as a stream.
pub struct BlobStream {
    pub len: Option<u64>,
    pub response: Response,
}

impl Registry {
    pub fn new(
        region: &str,
        base: &str,
        credential: Option<(String, String)>,
        http: Http,
    ) -> Registry {
        Registry {
            region: region.to_string(),
            http,
            base: base.trim_end_matches('/').to_string(),
            credential,
            auth: Mutex::new(HashMap::new()),
        }
    }

    /// The shared HTTP clients: connection pools per host, a connect timeout and the stall
    /// time ([`STALL`]), no overall timeout (a blob of many GB takes as long as it takes
    /// while bytes flow). HTTPS upstreams are checked against `ca_file` (the region's
    /// `probe.ca_file`, which defaults to `proxy.upstream_ca_file`) or the system roots, with
    /// the probe's rustls settings (ring, the provider pingora builds): Berth trusts one set
    /// of CAs per region.
    pub fn client(ca_file: Option<&std::path::Path>) -> anyhow::Result<Http> {
        Registry::client_stalling_after(ca_file, STALL)
    }

    fn client_stalling_after(
        ca_file: Option<&std::path::Path>,
        stall: Duration,
    ) -> anyhow::Result<Http> {
        let tls = crate::health::probe::tls_config(ca_file)
            .map_err(|e| anyhow::anyhow!("replication's registry client: {}", crate::report(&e)))?;
        let builder = || {
            reqwest::Client::builder()
                .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
                // Registries notify about Berth's own copies too; this is how they are told
                // apart.
                .user_agent(USER_AGENT)
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(60))
        };
        Ok(Http {
            api: builder().read_timeout(stall).build()?,
            upload: builder().build()?,
            stall,
        })
    }

    fn err_http(&self, what: &str, source: reqwest::Error) -> RegistryError {
        RegistryError::Http {
            region: self.region.clone(),
            what: what.to_string(),
            source: source.without_url(),
        }
    }

    fn other(&self, what: &str, message: impl Into<String>) -> RegistryError {
        RegistryError::Other {
            region: self.region.clone(),
            what: what.to_string(),
            message: message.into(),
        }
    }

    async fn err_status(&self, what: &str, r: Response) -> RegistryError {
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap_or_default();
        let codes: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.get("code").and_then(|c| c.as_str()).map(String::from))
            .collect();
        RegistryError::Status {
            region: self.region.clone(),
            what: what.to_string(),
            status,
            detail: if codes.is_empty() {
                String::new()
            } else {
                format!(" ({})", codes.join(", "))
            },
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        }
    }

    /// The `Authorization` for a request to `path_or_url`: its repository's token, else basic.
    fn current_auth(&self, path_or_url: &str) -> Option<String> {
        let auth = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        auth.get(scope_key(path_or_url))
            .or_else(|| auth.get(""))
            .cloned()
    }

    /// Send a request whose body (if any) can be sent again; on 401 answer the challenge
    /// once and repeat it.
    async fn send(
        &self,
        what: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Response, RegistryError> {
        for round in 0..2 {
            let mut req = self.http.api.request(method.clone(), self.url(path));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(a) = self.current_auth(path) {
                req = req.header(header::AUTHORIZATION, a);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let r = req.send().await.map_err(|e| self.err_http(what, e))?;
            if r.status() != StatusCode::UNAUTHORIZED || round == 1 {
                return Ok(r);
            }
            let challenge = r
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            self.answer_challenge(what, &challenge, scope_key(path))
                .await?;
        }
        Err(self.other(what, "unauthorized"))
    }

    /// Basic: send the configured pair. Bearer: ask the realm for a token with it, kept for
    /// the repository `key` names.
    async fn answer_challenge(
        &self,
        what: &str,
        challenge: &str,
        key: &str,
    ) -> Result<(), RegistryError> {
        let Some((user, pass)) = &self.credential else {
            return Err(self.other(
                what,
                "the registry wants credentials; add [[replication.credential]] for this region",
            ));
        };
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let (key, value) = if let Some(params) = strip_scheme(challenge, "bearer") {
            let p = parse_params(params);
            let realm = p
                .iter()
                .find(|(k, _)| k == "realm")
                .map(|(_, v)| v.clone())
                .ok_or_else(|| self.other(what, "bearer challenge without a realm"))?;
            let query: Vec<(&str, &str)> = p
                .iter()
                .filter(|(k, _)| k == "service" || k == "scope")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let url = reqwest::Url::parse_with_params(&realm, &query)
                .map_err(|e| self.other(what, format!("bad token realm: {e}")))?;
            let r = self
                .http
                .api
                .get(url)
                .header(header::AUTHORIZATION, &basic)
                .send()
                .await
                .map_err(|e| self.err_http("token realm", e))?;
            if !r.status().is_success() {
                return Err(self.err_status("token realm", r).await);
            }
            let v: serde_json::Value = r
                .json()
                .await
                .map_err(|e| self.err_http("token realm", e))?;
            let token = v
                .get("token")
                .or_else(|| v.get("access_token"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| self.other("token realm", "answer has no token"))?;
            (key, format!("Bearer {token}"))
        } else {
            ("", basic)
        };
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), value);
        Ok(())
    }

    /// Does the registry hold the blob in `repo`?
    pub async fn has_blob(&self, repo: &str, digest: &str) -> Result<bool, RegistryError> {
        let what = format!("HEAD blob {digest}");
        self.found(&what, Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"))
            .await
    }

    /// `method path` without a body: true on success, false on 404, else the error.
    async fn found(&self, what: &str, method: Method, path: &str) -> Result<bool, RegistryError> {
        let r = self.send(what, method, path, &[], None).await?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.err_status(what, r).await),
        }
    }

    /// The digest `repo:reference` names here, or None if it is not here.
    pub async fn manifest_digest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("HEAD manifest {repo}:{reference}");
        let r = self
            .send(
                &what,
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("accept", MANIFEST_TYPES)],
                None,
            )
            .await?;
        match r.status() {
            s if s.is_success() => Ok(r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(String::from)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.err_status(&what, r).await),
        }
    }

    /// The manifest's bytes and media type.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Bytes, String), RegistryError> {
        let what = format!("GET manifest {repo}:{reference}");
        let r = self
            .send(
                &what,
                Method::GET,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("accept", MANIFEST_TYPES)],
                None,
            )
            .await?;
        if !r.status().is_success() {
            return Err(self.err_status(&what, r).await);
        }
        let ct = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        let body = r.bytes().await.map_err(|e| self.err_http(&what, e))?;
        Ok((body, ct))
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        body: Bytes,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let what = format!("PUT manifest {repo}:{reference}");
        let r = self
            .send(
                &what,
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("content-type", media_type)],
                Some(body),
            )
            .await?;
        if !r.status().is_success() {
            return Err(self.err_status(&what, r).await);
        }
        Ok(())
    }

    /// Delete the manifest `repo:reference` (a digest, or a tag where the registry allows
    /// deleting tags). Ok(false): it was not there.
    pub async fn delete_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<bool, RegistryError> {
        let what = format!("DELETE manifest {repo}:{reference}");
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.found(&what, Method::DELETE, &path).await
    }

    /// Start an upload; with `mount_from`, ask for a cross-repository mount first. Ok(None):
    /// mounted, nothing to upload; Ok(Some(location)): upload there.
    pub async fn start_upload(
        &self,
        repo: &str,
        digest: &str,
        mount_from: Option<&str>,
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("start upload of {digest}");
        let path = match mount_from {
            Some(from) => format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"),
            None => format!("/v2/{repo}/blobs/uploads/"),
        };
        let r = self
            .send(&what, Method::POST, &path, &[("content-length", "0")], None)
            .await?;
        match r.status() {
            StatusCode::CREATED if mount_from.is_some() => Ok(None),
            StatusCode::ACCEPTED => r
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| Some(l.to_string()))
                .ok_or_else(|| self.other(&what, "202 without a Location")),
            _ => Err(self.err_status(&what, r).await),
        }
    }

    /// Start reading a blob: the body is not read here.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<BlobStream, RegistryError> {
        let what = format!("GET blob {digest}");
        let r = self
            .send(
                &what,
                Method::GET,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                None,
            )
            .await?;
        if !r.status().is_success() {
            return Err(self.err_status(&what, r).await);
        }
        Ok(BlobStream {
            len: r.content_length(),
            response: r,
        })
    }

    /// Finish an upload at `location` with one streamed PUT of the whole blob (monolithic):
    /// the body flows from `body` as it arrives, never held whole. Fails once no bytes have
    /// moved for the stall time: the source sends none, the destination takes none, or it
    /// does not answer after the last one.
    pub async fn put_blob<S>(
        &self,
        location: &str,
        digest: &str,
        len: Option<u64>,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: futures_util::Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
    {
        let what = format!("PUT blob {digest}");
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}digest={digest}", self.url(location));
        // When the body last moved (ms after `start`): a chunk handed to the PUT, or its end.
        let start = Instant::now();
        let moved = Arc::new(AtomicU64::new(0));
        let mark = moved.clone();
        let mut body = Box::pin(body);
        let watched = futures_util::stream::poll_fn(move |cx| {
            let next = futures_util::Stream::poll_next(body.as_mut(), cx);
            if next.is_ready() {
                mark.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            next
        });
        let mut req = self
            .http
            .upload
            .put(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(watched));
        if let Some(l) = len {
            req = req.header(header::CONTENT_LENGTH, l);
        }
        if let Some(a) = self.current_auth(location) {
            req = req.header(header::AUTHORIZATION, a);
        }
        let stall = self.http.stall;
        let send = req.send();
        tokio::pin!(send);
        let mut check = tokio::time::interval((stall / 4).max(Duration::from_millis(10)));
        let r = loop {
            tokio::select! {
                r = &mut send => break r.map_err(|e| self.err_http(&what, e))?,
                _ = check.tick() => {
                    let idle = start.elapsed().saturating_sub(Duration::from_millis(
                        moved.load(Ordering::Relaxed),
                    ));
                    if idle > stall {
                        return Err(self.other(
                            &what,
                            format!("no bytes moved for {} s", idle.as_secs()),
                        ));
                    }
                }
            }
        };
        if !r.status().is_success() {
            return Err(self.err_status(&what, r).await);
        }
        Ok(())
    }

    /// Every page of a list endpoint (`_catalog` or `tags/list`), following `Link` headers.
    async fn list(&self, first: &str, key: &str) -> Result<Vec<String>, RegistryError> {
        let mut out = vec![];
        let mut next = Some(first.to_string());
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > 10_000 {
                return Err(self.other(first, "more than 10000 pages"));
            }
            let r = self.send(first, Method::GET, &path, &[], None).await?;
            if r.status() == StatusCode::NOT_FOUND {
                return Ok(out);
            }
            if !r.status().is_success() {
                return Err(self.err_status(first, r).await);
            }
            next = r
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let v: serde_json::Value = r.json().await.map_err(|e| self.err_http(first, e))?;
            if let Some(items) = v.get(key).and_then(|x| x.as_array()) {
                out.extend(items.iter().filter_map(|x| x.as_str().map(String::from)));
            }
        }
        Ok(out)
    }

    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        self.list("/v2/_catalog?n=1000", "repositories").await
    }

    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        self.list(&format!("/v2/{repo}/tags/list?n=1000"), "tags")
            .await
    }
}

/// `<url>; rel="next"` from a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, rest) = part.trim().split_once(';')?;
        rest.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// Which repository a request is about, for its bearer token: the name between `/v2/` and
/// the last `/manifests/`, `/blobs/`, `/tags/` or `/referrers/` (a name may contain those
/// words as components); empty for registry-wide requests (`/v2/`, `/v2/_catalog`).
fn scope_key(path_or_url: &str) -> &str {
    let path = path_or_url.split('?').next().unwrap_or_default();
    let Some(at) = path.find("/v2/") else {
        return "";
    };
    let rest = &path[at + 4..];
    ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|m| rest.rfind(m))
        .max()
        .map_or("", |end| &rest[..end])
}

fn strip_scheme<'a>(challenge: &'a str, scheme: &str) -> Option<&'a str> {
    let c = challenge.trim_start();
    let (s, rest) = c.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// `realm="https://x",service="y",scope="repository:a:pull,push"`: the values may hold commas.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = s.trim();
    while let Some((k, after)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((k, v.to_string()));
        rest = next.trim_start().trim_start_matches(',');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_links() {
        let c = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#;
        let p = parse_params(strip_scheme(c, "bearer").unwrap());
        assert_eq!(
            p,
            [
                (
                    "realm".to_string(),
                    "https://auth.example/token".to_string()
                ),
                ("service".to_string(), "registry.example".to_string()),
                (
                    "scope".to_string(),
                    "repository:team/app:pull,push".to_string()
                ),
            ]
        );
        assert!(strip_scheme(r#"Basic realm="x""#, "bearer").is_none());
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
    }
    /// HTTPS: the client trusts the region's CA file (as the probe does) or the system roots,
    /// and a CA file that cannot be used is an error that names it.
    #[test]
    fn client_trusts_the_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["berth test CA".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = ca.self_signed(&key).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        Registry::client(Some(&path)).unwrap();
        Registry::client(None).unwrap();

        let missing = dir.path().join("missing.pem");
        let e = format!("{:#}", Registry::client(Some(&missing)).unwrap_err());
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let e = format!("{:#}", Registry::client(Some(&empty)).unwrap_err());
        assert!(e.contains("no usable certificate"), "{e}");
    }

    /// A registry on loopback that reads one PUT (head and `Content-Length` bytes) per
    /// connection and answers 201, or (`answer` false) keeps the connection open unanswered.
    async fn blob_sink(answer: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = vec![];
                    let mut buf = [0u8; 4096];
                    let body_at = loop {
                        let n = conn.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..body_at]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while got.len() - body_at < len {
                        let n = conn.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    if answer {
                        let _ = conn
                            .write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                            .await;
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// `n` chunks of 1 KiB, one every `every`, with `pause` before the chunk at `pause_at`.
    fn chunks(
        n: usize,
        every: Duration,
        pause_at: usize,
        pause: Duration,
    ) -> impl futures_util::Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static {
        futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(if i == pause_at { pause } else { every }).await;
            Some((Ok(Bytes::from(vec![7u8; 1024])), i + 1))
        })
    }

    /// A blob upload that takes longer than the stall time is fine while its bytes move
    /// (reqwest's read timeout, which the upload used before, ended it after the stall time
    /// whatever moved); a source that stops sending, or a destination that does not answer
    /// once it has every byte, fails it after the stall time.
    #[tokio::test]
    async fn a_blob_upload_fails_only_when_its_bytes_stop_moving() {
        // Margins for a loaded CI machine: a chunk every 100 ms against a 2 s stall time.
        let stall = Duration::from_secs(2);
        let http = Registry::client_stalling_after(None, stall).unwrap();
        let put = |base: String, body| {
            let reg = Registry::new("eastus", &base, None, http.clone());
            async move {
                reg.put_blob(
                    "/v2/team/app/blobs/uploads/u1",
                    "sha256:a",
                    Some(40 * 1024),
                    body,
                )
                .await
            }
        };
        let every = Duration::from_millis(100);
        let long = chunks(40, every, usize::MAX, every);
        let started = Instant::now();
        put(blob_sink(true).await, long)
            .await
            .expect("a 4 s upload that moves");
        assert!(started.elapsed() > stall * 3 / 2);

        let stalled = chunks(40, every, 5, stall * 3);
        let e = put(blob_sink(true).await, stalled)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("eastus: PUT blob sha256:a: no bytes moved for 2 s"),
            "{e}"
        );

        let unanswered = chunks(40, Duration::from_millis(10), usize::MAX, every);
        let e = put(blob_sink(false).await, unanswered)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no bytes moved"), "{e}");
    }

    #[test]
    fn scope_keys() {
        for (path, key) in [
            ("/v2/team/app/blobs/sha256:a", "team/app"),
            ("/v2/team/app/manifests/1.0", "team/app"),
            ("/v2/team/app/tags/list?n=100", "team/app"),
            (
                "/v2/team/blobs/app/blobs/uploads/?mount=sha256:a&from=x/blobs/y",
                "team/blobs/app",
            ),
            (
                "http://r.example:5000/v2/a/manifests/b/blobs/uploads/u1?_state=x",
                "a/manifests/b",
            ),
            ("/v2/_catalog?n=100", ""),
            ("/v2/", ""),
        ] {
            assert_eq!(scope_key(path), key, "{path}");
        }
    }

    /// A registry with a token server, as Harbor and distribution with `auth: token` are:
    /// a token is good for one repository. Tokens are asked once per repository, whatever
    /// the order of the requests, and an upload (which does not answer a challenge) carries
    /// its own repository's token, not the latest one fetched.
    #[tokio::test]
    async fn bearer_tokens_are_kept_per_repository() {
        use axum::extract::{Request, State};
        use axum::response::IntoResponse;
        use std::sync::atomic::AtomicUsize;
        #[derive(Clone)]
        struct Fake {
            base: String,
            tokens: Arc<AtomicUsize>,
            refused: Arc<AtomicUsize>,
        }
        async fn handle(State(f): State<Fake>, req: Request) -> axum::response::Response {
            let path = req.uri().path().to_string();
            if path == "/token" {
                f.tokens.fetch_add(1, Ordering::SeqCst);
                let query = req.uri().query().unwrap_or_default().replace("%3A", ":");
                let repo = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("scope=repository:"))
                    .and_then(|s| s.split(':').next())
                    .unwrap_or_default()
                    .replace("%2F", "/");
                return axum::Json(serde_json::json!({ "token": format!("tok-{repo}") }))
                    .into_response();
            }
            let repo = scope_key(&path).to_string();
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if auth != format!("Bearer tok-{repo}") {
                f.refused.fetch_add(1, Ordering::SeqCst);
                let challenge = format!(
                    "Bearer realm=\"{}/token\",service=\"fake\",scope=\"repository:{repo}:pull,push\"",
                    f.base
                );
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, challenge)],
                )
                    .into_response();
            }
            let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .unwrap();
            let status = if body.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            status.into_response()
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = Fake {
            base: base.clone(),
            tokens: Arc::default(),
            refused: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let reg = Registry::new(
            "eastus",
            &base,
            Some(("u".into(), "p".into())),
            Registry::client(None).unwrap(),
        );
        for repo in ["team/app", "team/tool", "team/app", "team/tool"] {
            assert!(reg.has_blob(repo, "sha256:a").await.unwrap(), "{repo}");
        }
        assert_eq!(
            fake.tokens.load(Ordering::SeqCst),
            2,
            "one token per repository"
        );
        assert_eq!(fake.refused.load(Ordering::SeqCst), 2);
        // The latest token fetched is team/tool's; the upload is team/app's.
        let body = futures_util::stream::iter([Ok::<_, reqwest::Error>(Bytes::from_static(b"x"))]);
        reg.put_blob("/v2/team/app/blobs/uploads/u1", "sha256:a", Some(1), body)
            .await
            .expect("the upload carries team/app's token");
    }
}
