//! Upload-session tokens: which region holds an upload session, signed so that any Berth
//! instance with the shared secret can route the session's later requests there, with no
//! shared state. Also the URL surgery around them: adding the token to a registry's
//! `Location`, finding and removing it in a request's query. Pure: no IO, no clock.
//!
//! A token is `<region>.<expiry>.<hex HMAC-SHA256>` over (region, repository, upload uuid,
//! expiry), carried in the query parameter [`PARAM`]. Binding the repository and uuid means a
//! token cannot be moved to another session; naming the region in clear lets the proxy route
//! without a lookup; the expiry (Unix seconds, signed, so it cannot be pushed back) bounds how
//! long a leaked `Location` URL stays usable. Every answer in a session carries a fresh
//! token, so only a session left idle for the whole lifetime runs into it.
//! Clients reuse `Location` URLs as given (appending only `digest=`), so the parameter comes
//! back on every request of the session. Time is a parameter: the caller reads the clock.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// The query parameter that carries the token.
pub const PARAM: &str = "_berth";

/// Domain separation, so the key signs nothing else by accident. Bump on a format change.
const CONTEXT: &[u8] = b"berth upload token v2";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the upload token is malformed")]
    Malformed,
    #[error("the upload token's signature does not match this upload")]
    BadSignature,
    #[error("the upload token expired {0} s ago; start the upload again")]
    Expired(u64),
}

/// Signs and checks tokens with the secret all instances share.
pub struct Signer {
    mac: hmac::Hmac<Sha256>,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            mac: hmac::Hmac::<Sha256>::new_from_slice(secret)
                .expect("HMAC accepts keys of any length"),
        }
    }

    fn mac(&self, region: &str, repo: &str, uuid: &str, expires: u64) -> hmac::Hmac<Sha256> {
        let mut m = self.mac.clone();
        // Length-prefixed fields: no two (region, repo, uuid, expiry) tuples share an input.
        let expires = expires.to_be_bytes();
        for part in [
            CONTEXT,
            region.as_bytes(),
            repo.as_bytes(),
            uuid.as_bytes(),
            &expires,
        ] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        m
    }

    /// The token for an upload session `uuid` of `repo` held by `region`, valid until
    /// `expires` (Unix seconds).
    pub fn sign(&self, region: &str, repo: &str, uuid: &str, expires: u64) -> String {
        let tag = self
            .mac(region, repo, uuid, expires)
            .finalize()
            .into_bytes();
        let expires = expires.to_string();
        let mut out = String::with_capacity(region.len() + expires.len() + 2 + tag.len() * 2);
        out.push_str(region);
        out.push('.');
        out.push_str(&expires);
        out.push('.');
        for b in tag.iter() {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }

    /// The region a token names, if its signature matches (`repo`, `uuid`) and it has not
    /// expired at `now` (Unix seconds). Constant time in the signature; the expiry is only
    /// looked at once the signature holds, so a forged one is never reported as expired.
    pub fn verify<'t>(
        &self,
        token: &'t str,
        repo: &str,
        uuid: &str,
        now: u64,
    ) -> Result<&'t str, TokenError> {
        let (rest, hex) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (region, expires) = rest.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let valid_region = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        // Canonical decimal only: one expiry, one spelling.
        let expires = (!expires.is_empty()
            && expires.len() <= 20
            && expires.bytes().all(|b| b.is_ascii_digit())
            && !(expires.len() > 1 && expires.starts_with('0')))
        .then(|| expires.parse::<u64>().ok())
        .flatten()
        .ok_or(TokenError::Malformed)?;
        let tag = decode_hex(hex).ok_or(TokenError::Malformed)?;
        if !valid_region || tag.len() != 32 {
            return Err(TokenError::Malformed);
        }
        self.mac(region, repo, uuid, expires)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        if now >= expires {
            return Err(TokenError::Expired(now - expires));
        }
        Ok(region)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

/// The token in a query string, and the query without it (None if nothing is left).
pub fn take_token(query: &str) -> (Option<&str>, Option<String>) {
    let mut token = None;
    let mut rest: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix(PARAM).and_then(|v| v.strip_prefix('=')) {
            Some(v) if token.is_none() => token = Some(v),
            // A second token parameter is dropped too: only the first one counts.
            Some(_) => {}
            None if pair.is_empty() => {}
            None => rest.push(pair),
        }
    }
    let rest = (!rest.is_empty()).then(|| rest.join("&"));
    (token, rest)
}

/// A `Location` header value taken apart: `[scheme://authority]path[?query]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Location<'a> {
    /// `http://host:port` if the value is absolute.
    pub origin: Option<&'a str>,
    /// The authority inside `origin`.
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl<'a> Location<'a> {
    pub fn parse(value: &'a str) -> Location<'a> {
        let (origin, authority, rest) = match value.find("://") {
            Some(i) if value[..i].bytes().all(|b| b.is_ascii_alphabetic()) => {
                let after = &value[i + 3..];
                let end = after.find(['/', '?']).unwrap_or(after.len());
                (
                    Some(&value[..i + 3 + end]),
                    Some(&after[..end]),
                    &after[end..],
                )
            }
            _ => (None, None, value),
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        Location {
            origin,
            authority,
            path,
            query,
        }
    }
}

/// Rewrite a registry's `Location` for the client: a URL the registry built from its own
/// configured host (`upstream_authority`) is moved to the public origin the client used, and
/// if `token` is given it replaces any token in the query. Anything else (a redirect to
/// storage elsewhere, say) is left as it is. None: leave the header unchanged.
pub fn rewrite_location(
    value: &str,
    upstream_authority: &str,
    public_origin: &str,
    token: Option<&str>,
) -> Option<String> {
    let loc = Location::parse(value);
    let public_authority = Location::parse(public_origin).authority.unwrap_or("");
    let origin = match loc.authority {
        None => "",
        Some(a) if a.eq_ignore_ascii_case(upstream_authority) => public_origin,
        Some(a) if a.eq_ignore_ascii_case(public_authority) => loc.origin.unwrap_or(""),
        // Absolute URLs elsewhere are not ours to change, and never get a token: it would
        // leak to a third party.
        Some(_) => return None,
    };
    let mut query = loc.query.map(|q| take_token(q).1).unwrap_or_default();
    if let Some(t) = token {
        let q = query.get_or_insert_with(String::new);
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(PARAM);
        q.push('=');
        q.push_str(t);
    }
    let mut out = format!("{origin}{}", loc.path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&q);
    }
    (out != value).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10";
    /// An arbitrary "now" (Unix seconds) and an expiry a day later.
    const NOW: u64 = 1_800_000_000;
    const EXP: u64 = NOW + 86_400;

    #[test]
    fn sign_and_verify() {
        let s = Signer::new(b"shared secret of the fleet");
        let t = s.sign("westus", "team/app", UUID, EXP);
        assert!(t.starts_with("westus.1800086400."), "{t}");
        assert_eq!(t.len(), "westus.1800086400.".len() + 64);
        assert_eq!(s.verify(&t, "team/app", UUID, NOW), Ok("westus"));
        // Same secret, another instance: same answer (no shared state but the secret).
        assert_eq!(
            Signer::new(b"shared secret of the fleet").verify(&t, "team/app", UUID, NOW),
            Ok("westus")
        );
    }

    #[test]
    fn tokens_expire_and_the_expiry_is_signed() {
        let s = Signer::new(b"k");
        let t = s.sign("westus", "team/app", UUID, EXP);
        assert_eq!(s.verify(&t, "team/app", UUID, EXP - 1), Ok("westus"));
        assert_eq!(
            s.verify(&t, "team/app", UUID, EXP),
            Err(TokenError::Expired(0))
        );
        assert_eq!(
            s.verify(&t, "team/app", UUID, EXP + 90),
            Err(TokenError::Expired(90))
        );
        assert_eq!(
            TokenError::Expired(90).to_string(),
            "the upload token expired 90 s ago; start the upload again"
        );
        // Pushing the expiry back breaks the signature; a forged token is never "expired".
        let later = t.replace(".1800086400.", ".1900000000.");
        assert_eq!(
            s.verify(&later, "team/app", UUID, EXP + 90),
            Err(TokenError::BadSignature)
        );
        for bad in [
            ".01800086400.",
            ".+1800086400.",
            "..",
            ".18000864000000000000000.",
        ] {
            let odd = t.replace(".1800086400.", bad);
            assert_eq!(
                s.verify(&odd, "team/app", UUID, NOW),
                Err(TokenError::Malformed),
                "{odd}"
            );
        }
    }

    #[test]
    fn forged_and_moved_tokens_fail() {
        let s = Signer::new(b"k1");
        let t = s.sign("westus", "team/app", UUID, EXP);
        let other_key = Signer::new(b"k2");
        assert_eq!(
            other_key.verify(&t, "team/app", UUID, NOW),
            Err(TokenError::BadSignature)
        );
        // The region swapped for another: the signature no longer matches.
        let moved = t.replacen("westus", "eastus", 1);
        assert_eq!(
            s.verify(&moved, "team/app", UUID, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            s.verify(&t, "team/other", UUID, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            s.verify(&t, "team/app", "x", NOW),
            Err(TokenError::BadSignature)
        );
        // One flipped hex digit.
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert_eq!(
            s.verify(&flipped, "team/app", UUID, NOW),
            Err(TokenError::BadSignature)
        );
        // A v1 token (no expiry) from before an upgrade is malformed, not a crash.
        let v1 = format!("westus.{}", &t[t.len() - 64..]);
        for bad in [
            "",
            "westus",
            "westus.",
            "westus.zz",
            "westus.1.zz",
            ".1.00",
            "West.1.00",
            &v1,
            &t[..t.len() - 2],
        ] {
            assert_eq!(
                s.verify(bad, "team/app", UUID, NOW),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fields_do_not_run_together() {
        let s = Signer::new(b"k");
        let t = s.sign("a", "bc/d", "e", EXP);
        assert!(s.verify(&t, "b", "c/de", NOW).is_err());
    }

    #[test]
    fn token_in_query() {
        assert_eq!(
            take_token("_state=abc&_berth=westus.00&digest=sha256:1"),
            (
                Some("westus.00"),
                Some("_state=abc&digest=sha256:1".to_string())
            )
        );
        assert_eq!(take_token("_berth=x"), (Some("x"), None));
        assert_eq!(take_token("_state=a"), (None, Some("_state=a".to_string())));
        assert_eq!(
            take_token("_berthx=1&_berth=a&_berth=b"),
            (Some("a"), Some("_berthx=1".to_string()))
        );
        assert_eq!(take_token(""), (None, None));
    }

    #[test]
    fn locations() {
        let up = "127.0.0.1:5001";
        let public = "http://registry.example.test:8080";
        let tok = Some("westus.ab");
        // Built from X-Forwarded-Host: already public; the token is appended.
        assert_eq!(
            rewrite_location(
                &format!("{public}/v2/team/app/blobs/uploads/{UUID}?_state=s1"),
                up,
                public,
                tok
            )
            .as_deref(),
            Some(
                format!("{public}/v2/team/app/blobs/uploads/{UUID}?_state=s1&_berth=westus.ab")
                    .as_str()
            )
        );
        // Built from the registry's own http.host: moved to the public origin.
        assert_eq!(
            rewrite_location(
                &format!("http://127.0.0.1:5001/v2/a/blobs/uploads/{UUID}?_state=s"),
                up,
                public,
                tok
            )
            .as_deref(),
            Some(format!("{public}/v2/a/blobs/uploads/{UUID}?_state=s&_berth=westus.ab").as_str())
        );
        // Relative (http.relativeurls): stays relative; an old token is replaced.
        assert_eq!(
            rewrite_location(
                &format!("/v2/a/blobs/uploads/{UUID}?_berth=old.00&_state=s"),
                up,
                public,
                tok
            )
            .as_deref(),
            Some(format!("/v2/a/blobs/uploads/{UUID}?_state=s&_berth=westus.ab").as_str())
        );
        // No query at all.
        assert_eq!(
            rewrite_location(&format!("/v2/a/blobs/uploads/{UUID}"), up, public, tok).as_deref(),
            Some(format!("/v2/a/blobs/uploads/{UUID}?_berth=westus.ab").as_str())
        );
        // A blob's Location after the final PUT: only the origin matters.
        assert_eq!(
            rewrite_location(
                "http://127.0.0.1:5001/v2/a/blobs/sha256:1",
                up,
                public,
                None
            )
            .as_deref(),
            Some(format!("{public}/v2/a/blobs/sha256:1").as_str())
        );
        assert_eq!(
            rewrite_location(&format!("{public}/v2/a/blobs/sha256:1"), up, public, None),
            None
        );
        // A redirect to storage somewhere else is left alone, and never gets a token.
        assert_eq!(
            rewrite_location("https://s3.example.com/bucket/x?sig=1", up, public, None),
            None
        );
        assert_eq!(
            rewrite_location("https://s3.example.com/bucket/x?sig=1", up, public, tok),
            None
        );
    }

    #[test]
    fn location_parts() {
        assert_eq!(
            Location::parse("https://h:1/v2/x?q=1"),
            Location {
                origin: Some("https://h:1"),
                authority: Some("h:1"),
                path: "/v2/x",
                query: Some("q=1")
            }
        );
        assert_eq!(
            Location::parse("/v2/x"),
            Location {
                origin: None,
                authority: None,
                path: "/v2/x",
                query: None
            }
        );
        assert_eq!(
            Location::parse("http://h?x"),
            Location {
                origin: Some("http://h"),
                authority: Some("h"),
                path: "",
                query: Some("x")
            }
        );
    }
}
