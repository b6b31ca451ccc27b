//! The OCI distribution API as the proxy needs to see it: which kind of request a path is, the
//! repository it names, and the error bodies registries answer with. Pure: no IO, no pingora.
//!
//! Paths are parsed from the right, because repository names contain slashes and may contain
//! components such as `blobs` or `manifests`: `/v2/a/blobs/b/manifests/1` is the manifest `1`
//! of repository `a/blobs/b`. A digest always has a `:` and an upload uuid never does, which
//! is what tells `/blobs/<digest>` from `/blobs/uploads/<uuid>`.

/// What a request path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/` (or `/v2`): the API version check.
    Base,
    /// `/v2/<repo>/blobs/<digest>`
    Blob { repo: &'a str, digest: &'a str },
    /// `/v2/<repo>/blobs/uploads/`: start an upload (or mount a blob).
    UploadStart { repo: &'a str },
    /// `/v2/<repo>/blobs/uploads/<uuid>`: an upload session.
    Upload { repo: &'a str, uuid: &'a str },
    /// `/v2/<repo>/manifests/<tag or digest>`
    Manifest { repo: &'a str, reference: &'a str },
    /// `/v2/<repo>/tags/list`
    Tags { repo: &'a str },
    /// `/v2/<repo>/referrers/<digest>`
    Referrers { repo: &'a str, digest: &'a str },
    /// Anything else: `/v2/_catalog`, paths outside `/v2/`, malformed names.
    Other,
}

impl<'a> Route<'a> {
    /// The repository the request is about, if any.
    pub fn repo(&self) -> Option<&'a str> {
        match *self {
            Route::Blob { repo, .. }
            | Route::UploadStart { repo }
            | Route::Upload { repo, .. }
            | Route::Manifest { repo, .. }
            | Route::Tags { repo }
            | Route::Referrers { repo, .. } => Some(repo),
            Route::Base | Route::Other => None,
        }
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } => "upload-start",
            Route::Upload { .. } => "upload",
            Route::Manifest { .. } => "manifest",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::Other => "other",
        }
    }
}

/// A request path percent-decoded once, as registries decode it before they route it
/// (Go's `net/url` and gorilla/mux: `/v2/team%2fapp/...` is repository `team/app`). Borrowed
/// when there is nothing to decode. None: a malformed escape, or bytes that are not UTF-8 or
/// are control characters, which no OCI path holds (Go's server answers 400 to the first).
pub fn decode_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !path.contains('%') {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| char::from(c).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.chars().any(char::is_control)).then_some(std::borrow::Cow::Owned(s))
}

/// Parse a request path (without the query string).
pub fn parse(path: &str) -> Route<'_> {
    if path == "/v2" || path == "/v2/" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    let route = if let Some(repo) = rest.strip_suffix("/tags/list") {
        Route::Tags { repo }
    } else if let Some(repo) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        Route::UploadStart { repo }
    } else {
        let Some((head, last)) = rest.rsplit_once('/') else {
            return Route::Other;
        };
        let Some((repo, verb)) = head.rsplit_once('/') else {
            return Route::Other;
        };
        match verb {
            "manifests" if is_reference(last) => Route::Manifest {
                repo,
                reference: last,
            },
            "blobs" if is_digest(last) => Route::Blob { repo, digest: last },
            "referrers" if is_digest(last) => Route::Referrers { repo, digest: last },
            "uploads" if is_uuid(last) => match repo.strip_suffix("/blobs") {
                Some(repo) => Route::Upload { repo, uuid: last },
                None => return Route::Other,
            },
            _ => return Route::Other,
        }
    };
    match route.repo() {
        Some(repo) if is_repository(repo) => route,
        _ => Route::Other,
    }
}

/// A repository name per the distribution spec: path components of lowercase letters and
/// digits, separated inside by `.`, `_`, `__` or runs of `-`.
pub fn is_repository(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or one or more "-", between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// `algorithm:encoded`, e.g. `sha256:` and 64 hex digits (other algorithms pass if well formed).
pub fn is_digest(s: &str) -> bool {
    let Some((alg, enc)) = s.split_once(':') else {
        return false;
    };
    !alg.is_empty()
        && alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        && !enc.is_empty()
        && enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
}

/// A tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`) or a digest.
fn is_reference(s: &str) -> bool {
    is_digest(s)
        || (!s.is_empty()
            && s.len() <= 128
            && s.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
            }))
}

/// An upload id as registries make them (distribution: a UUID); never contains ':'.
fn is_uuid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b))
}

/// An OCI error body: `{"errors":[{"code":...,"message":...,"detail":...}]}`.
pub fn error_body(code: &str, message: &str, detail: Option<&str>) -> String {
    let detail = match detail {
        Some(d) => format!(",\"detail\":{}", json_string(d)),
        None => String::new(),
    };
    format!(
        "{{\"errors\":[{{\"code\":{},\"message\":{}{detail}}}]}}",
        json_string(code),
        json_string(message)
    )
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Does an error body from a registry carry this OCI error code?
pub fn has_error_code(body: &[u8], code: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    v.get("errors")
        .and_then(|e| e.as_array())
        .is_some_and(|errs| {
            errs.iter()
                .any(|e| e.get("code").and_then(|c| c.as_str()) == Some(code))
        })
}

/// What a manifest refers to that must already be in the registry before it can be stored:
/// blobs (config and layers of an image manifest) and manifests (of an index).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    pub blobs: Vec<String>,
    pub manifests: Vec<String>,
}

/// The references of an OCI or Docker v2 manifest or index; None if it is not JSON of that shape.
pub fn references(manifest: &[u8]) -> Option<References> {
    let v: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let digest = |d: &serde_json::Value| {
        d.get("digest")
            .and_then(|x| x.as_str())
            .filter(|x| is_digest(x))
            .map(String::from)
    };
    let mut r = References::default();
    if let Some(c) = v.get("config") {
        r.blobs.push(digest(c)?);
    }
    for l in v
        .get("layers")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
    {
        // Foreign layers (with urls) live elsewhere; the registry does not check them.
        if l.get("urls").is_none() {
            r.blobs.push(digest(l)?);
        }
    }
    for m in v
        .get("manifests")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
    {
        r.manifests.push(digest(m)?);
    }
    if let Some(s) = v.get("subject") {
        r.manifests.push(digest(s)?);
    }
    let mut seen = Vec::with_capacity(r.blobs.len());
    r.blobs.retain(|d| {
        let new = !seen.contains(d);
        seen.push(d.clone());
        new
    });
    (!r.blobs.is_empty() || !r.manifests.is_empty()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(paths: &[&str], expect: Expect) {
        let out: String = paths
            .iter()
            .map(|p| format!("{p} -> {:?}\n", parse(p)))
            .collect();
        expect.assert_eq(&out);
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn paths() {
        check(
            &[
                "/v2/",
                "/v2",
                "/v2/_catalog",
                "/",
                "/v1/x",
                "/v2/team/app/tags/list",
                "/v2/team/app/blobs/uploads/",
                "/v2/team/app/blobs/uploads",
                "/v2/team/app/blobs/uploads/4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10",
                "/v2/team/app/manifests/1.0",
                "/v2/team/app/manifests/latest",
                "/v2/a/b/c/d/manifests/v1-rc.2",
            ],
            expect![[r#"
                /v2/ -> Base
                /v2 -> Base
                /v2/_catalog -> Other
                / -> Other
                /v1/x -> Other
                /v2/team/app/tags/list -> Tags { repo: "team/app" }
                /v2/team/app/blobs/uploads/ -> UploadStart { repo: "team/app" }
                /v2/team/app/blobs/uploads -> UploadStart { repo: "team/app" }
                /v2/team/app/blobs/uploads/4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10 -> Upload { repo: "team/app", uuid: "4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10" }
                /v2/team/app/manifests/1.0 -> Manifest { repo: "team/app", reference: "1.0" }
                /v2/team/app/manifests/latest -> Manifest { repo: "team/app", reference: "latest" }
                /v2/a/b/c/d/manifests/v1-rc.2 -> Manifest { repo: "a/b/c/d", reference: "v1-rc.2" }
            "#]],
        );
    }

    #[test]
    fn digests_and_repositories_with_api_words() {
        let paths = [
            format!("/v2/app/blobs/{D}"),
            format!("/v2/app/manifests/{D}"),
            format!("/v2/app/referrers/{D}"),
            // Repository names may contain the API's own words as components.
            format!("/v2/a/blobs/b/blobs/{D}"),
            "/v2/a/manifests/b/manifests/2".to_string(),
            format!("/v2/blobs/uploads/blobs/{D}"),
            "/v2/x/blobs/uploads/blobs/uploads/".to_string(),
            "/v2/tags/tags/list".to_string(),
        ];
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        check(
            &refs,
            expect![[r#"
                /v2/app/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef -> Blob { repo: "app", digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }
                /v2/app/manifests/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef -> Manifest { repo: "app", reference: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }
                /v2/app/referrers/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef -> Referrers { repo: "app", digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }
                /v2/a/blobs/b/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef -> Blob { repo: "a/blobs/b", digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }
                /v2/a/manifests/b/manifests/2 -> Manifest { repo: "a/manifests/b", reference: "2" }
                /v2/blobs/uploads/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef -> Blob { repo: "blobs/uploads", digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }
                /v2/x/blobs/uploads/blobs/uploads/ -> UploadStart { repo: "x/blobs/uploads" }
                /v2/tags/tags/list -> Tags { repo: "tags" }
            "#]],
        );
    }

    #[test]
    fn malformed_paths_are_other() {
        check(
            &[
                "/v2/App/manifests/1",
                "/v2/app/blobs/notadigest",
                "/v2/app/manifests/",
                "/v2/app/manifests/-bad",
                "/v2/a//b/tags/list",
                "/v2/a-/tags/list",
                "/v2/a..b/tags/list",
                "/v2/a___b/tags/list",
                "/v2/a__b/tags/list",
                "/v2/a--b/tags/list",
                "/v2/app/blobs/uploads/has:colon",
                "/v2/app/uploads/4e0b",
                "/v2/manifests/1",
                "/v2/app/other/x",
            ],
            expect![[r#"
                /v2/App/manifests/1 -> Other
                /v2/app/blobs/notadigest -> Other
                /v2/app/manifests/ -> Other
                /v2/app/manifests/-bad -> Other
                /v2/a//b/tags/list -> Other
                /v2/a-/tags/list -> Other
                /v2/a..b/tags/list -> Other
                /v2/a___b/tags/list -> Other
                /v2/a__b/tags/list -> Tags { repo: "a__b" }
                /v2/a--b/tags/list -> Tags { repo: "a--b" }
                /v2/app/blobs/uploads/has:colon -> Other
                /v2/app/uploads/4e0b -> Other
                /v2/manifests/1 -> Other
                /v2/app/other/x -> Other
            "#]],
        );
    }

    #[test]
    fn encoded_paths_are_decoded_once_as_a_registry_does() {
        let d = |p: &str| decode_path(p).map(|c| c.into_owned());
        assert_eq!(
            d("/v2/team%2fapp/blobs/uploads/").as_deref(),
            Some("/v2/team/app/blobs/uploads/")
        );
        assert_eq!(
            d("/v2/team%2Fapp/blobs/sha256%3A00").as_deref(),
            Some("/v2/team/app/blobs/sha256:00")
        );
        // Once only: a double escape stays an escape (and then is no repository name).
        assert_eq!(
            d("/v2/a%252fb/tags/list").as_deref(),
            Some("/v2/a%2fb/tags/list")
        );
        assert!(matches!(
            decode_path("/v2/plain/tags/list"),
            Some(std::borrow::Cow::Borrowed(_))
        ));
        for bad in [
            "/v2/a%2",
            "/v2/a%zz/tags/list",
            "/v2/a%ff/tags/list",
            "/v2/a%00b/x",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
        let route = |p: &str| parse(&decode_path(p).expect("decodes")).kind();
        assert_eq!(route("/v2/team%2fapp/blobs/uploads/"), "upload-start");
        assert_eq!(route("/v2/a%252fb/tags/list"), "other");
    }

    #[test]
    fn error_bodies() {
        let b = error_body(
            "BLOB_UPLOAD_UNKNOWN",
            "upload \"x\" unknown",
            Some("region gone"),
        );
        assert_eq!(
            b,
            r#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"upload \"x\" unknown","detail":"region gone"}]}"#
        );
        assert!(has_error_code(b.as_bytes(), "BLOB_UPLOAD_UNKNOWN"));
        assert!(!has_error_code(b.as_bytes(), "MANIFEST_BLOB_UNKNOWN"));
        let registry = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#;
        assert!(has_error_code(registry, "MANIFEST_BLOB_UNKNOWN"));
        assert!(!has_error_code(b"not json", "MANIFEST_BLOB_UNKNOWN"));
    }

    #[test]
    fn manifest_references() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
               "config":{{"digest":"{D}","size":1}},
               "layers":[{{"digest":"sha256:aa","size":2}},{{"digest":"sha256:bb","size":3}},
                         {{"digest":"sha256:cc","size":4,"urls":["https://example.com/x"]}}]}}"#
        );
        let r = references(image.as_bytes()).expect("an image manifest");
        assert_eq!(r.blobs, vec![D, "sha256:aa", "sha256:bb"]);
        assert!(r.manifests.is_empty());
        let index =
            r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:m1"},{"digest":"sha256:m2"}]}"#;
        let r = references(index.as_bytes()).expect("an index");
        assert_eq!(r.manifests, vec!["sha256:m1", "sha256:m2"]);
        assert_eq!(references(b"{}"), None);
        assert_eq!(references(b"garbage"), None);
        assert_eq!(
            references(br#"{"config":{"digest":"../../etc"}}"#),
            None,
            "a malformed digest is never turned into a path"
        );
    }
}
