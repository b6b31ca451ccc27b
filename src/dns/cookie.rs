//! DNS COOKIE server side (RFC 7873) with interoperable server cookies (RFC 9018): version 1,
//! three reserved octets, a 32-bit Unix timestamp, and SipHash-2-4 over client cookie |
//! version | reserved | timestamp | client address, keyed with the server secret. Any server
//! of the same secret (Berth, Knot, BIND, gdnsd...) accepts the cookies of the others.
//!
//! Pure: time is a parameter, the secret is given. Berth does not *require* cookies (no
//! BADCOOKIE): a missing, bad or expired server cookie is answered like a first query, with
//! a fresh server cookie. What a valid one buys is exemption from response rate limiting.

use std::hash::Hasher;
use std::net::IpAddr;

use siphasher::sip::SipHasher24;

use super::edns::Cookie;

/// Server cookies are accepted up to an hour old (RFC 9018 4.3)...
const MAX_AGE: i64 = 3600;
/// ...and up to five minutes in the future (clock skew between instances)...
const MAX_SKEW: i64 = 300;
/// ...and replaced by a fresh one once older than half an hour.
const REFRESH_AGE: i64 = 1800;

/// The 128-bit SipHash key every instance behind one address shares.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 16]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never in logs or error texts.
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// 32 hexadecimal digits (surrounding whitespace ignored), as `openssl rand -hex 16` prints.
    pub fn from_hex(text: &str) -> Result<Secret, String> {
        let t = text.trim();
        if t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a cookie secret is 32 hexadecimal digits (128 bits, e.g. `openssl rand -hex 16`), \
                 not {} characters",
                t.len()
            ));
        }
        let mut key = [0u8; 16];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Secret(key))
    }
}

/// The COOKIE option data of an answer (client cookie, then a 16-octet server cookie) and
/// whether the query's server cookie was valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub option: [u8; 24],
    pub valid: bool,
}

/// The hash of RFC 9018 4.4 over the first 8 octets of a server cookie as given.
fn hash(secret: &Secret, client: &[u8; 8], head: &[u8], ip: IpAddr) -> [u8; 8] {
    let mut h = SipHasher24::new_with_key(&secret.0);
    h.write(client);
    h.write(head);
    match ip {
        IpAddr::V4(a) => h.write(&a.octets()),
        IpAddr::V6(a) => h.write(&a.octets()),
    }
    // RFC 9018's test vectors read SipHash's output as the reference code writes it out:
    // little-endian.
    h.finish().to_le_bytes()
}

/// A fresh server cookie for `client` at `ip`, stamped `now` (Unix seconds, mod 2^32).
pub fn server_cookie(secret: &Secret, client: &[u8; 8], ip: IpAddr, now: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = 1;
    out[4..8].copy_from_slice(&now.to_be_bytes());
    let h = hash(secret, client, &out[..8], ip);
    out[8..].copy_from_slice(&h);
    out
}

/// Is `server` a cookie this secret gave `client` at `ip`, within its age window at `now`?
/// The age is serial-number arithmetic on 32 bits, as RFC 9018 says.
pub fn age(secret: &Secret, client: &[u8; 8], server: &[u8], ip: IpAddr, now: u32) -> Option<i64> {
    if server.len() != 16 || server[0] != 1 {
        return None;
    }
    let stamp = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
    let age = i64::from(now.wrapping_sub(stamp) as i32);
    if !(-MAX_SKEW..=MAX_AGE).contains(&age) {
        return None;
    }
    // Not constant-time: a mismatch position tells an attacker nothing usable, since the
    // hash covers its own address and a forgery needs the whole 64 bits.
    (hash(secret, client, &server[..8], ip) == server[8..16]).then_some(age)
}

/// The COOKIE option to answer `cookie` from `ip` with at `now`: the valid server cookie
/// again while it is young, else a fresh one.
pub fn answer(secret: &Secret, cookie: &Cookie<'_>, ip: IpAddr, now: u32) -> Answer {
    let mut option = [0u8; 24];
    option[..8].copy_from_slice(&cookie.client);
    let age = cookie
        .server
        .and_then(|s| age(secret, &cookie.client, s, ip, now));
    match (age, cookie.server) {
        (Some(a), Some(s)) if a <= REFRESH_AGE => option[8..].copy_from_slice(s),
        _ => option[8..].copy_from_slice(&server_cookie(secret, &cookie.client, ip, now)),
    }
    Answer {
        option,
        valid: age.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn cookie(bytes: &[u8]) -> Cookie<'_> {
        Cookie::parse(bytes).unwrap()
    }

    const SECRET: &str = "e5e973e5a6b2a43f48e7dc849e37bfcf";

    /// RFC 9018 appendix A: the interoperability test vectors.
    #[test]
    fn rfc9018_test_vectors() {
        let secret = Secret::from_hex(SECRET).unwrap();
        let c1: IpAddr = "198.51.100.100".parse().unwrap();
        // A.1: learning a new server cookie.
        let q = hex("2464c4abcf10c957");
        let a = answer(&secret, &cookie(&q), c1, 1559731985);
        assert_eq!(
            a.option.to_vec(),
            hex("2464c4abcf10c957010000005cf79f111f8130c3eee29480")
        );
        assert!(!a.valid);
        // A.2: the same client 40 minutes later: valid, and old enough to be renewed.
        let q = hex("2464c4abcf10c957010000005cf79f111f8130c3eee29480");
        let a = answer(&secret, &cookie(&q), c1, 1559734385);
        assert!(a.valid);
        assert_eq!(
            a.option.to_vec(),
            hex("2464c4abcf10c957010000005cf7a871d4a564a1442aca77")
        );
        // A.3: another client, reserved octets set by another implementation: the hash holds
        // (checked at its own time), but at 1h52m old it has expired: a fresh one.
        let c2: IpAddr = "203.0.113.203".parse().unwrap();
        let q = hex("fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5");
        assert_eq!(
            age(&secret, &cookie(&q).client, &q[8..], c2, 1559727985),
            Some(0)
        );
        let a = answer(&secret, &cookie(&q), c2, 1559734700);
        assert!(!a.valid);
        assert_eq!(
            a.option.to_vec(),
            hex("fc93fc62807ddb86010000005cf7a9acf73a7810aca2381e")
        );
        // A.4: IPv6, the secret rolled over: the old cookie is not valid under the new one.
        let c6: IpAddr = "2001:db8:220:1:59de:d0f4:8769:82b8".parse().unwrap();
        let new = Secret::from_hex("445536bcd2513298075a5d379663c962").unwrap();
        let q = hex("22681ab97d52c298010000005cf7c57926556bd0934c72f8");
        let a = answer(&new, &cookie(&q), c6, 1559741961);
        assert!(!a.valid);
        assert_eq!(
            a.option.to_vec(),
            hex("22681ab97d52c298010000005cf7c609a6bb79d16625507a")
        );
        let old = Secret::from_hex("dd3bdf9344b678b185a6f5cb60fca715").unwrap();
        assert!(age(&old, &cookie(&q).client, &q[8..], c6, 1559741961).is_some());
    }

    #[test]
    fn age_window_and_binding() {
        let secret = Secret::from_hex(SECRET).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let client = [1, 2, 3, 4, 5, 6, 7, 8];
        let t = 1_000_000;
        let s = server_cookie(&secret, &client, ip, t);
        for (now, ok) in [
            (t, true),
            (t + 3600, true),
            (t + 3601, false),
            (t - 300, true),
            (t - 301, false),
        ] {
            assert_eq!(age(&secret, &client, &s, ip, now).is_some(), ok, "at {now}");
        }
        // Young: echoed as is; past half an hour: renewed with the current time.
        let mut q = client.to_vec();
        q.extend_from_slice(&s);
        assert_eq!(answer(&secret, &cookie(&q), ip, t + 1800).option[8..], s);
        let renewed = answer(&secret, &cookie(&q), ip, t + 1801);
        assert!(renewed.valid);
        assert_eq!(
            renewed.option[8..],
            server_cookie(&secret, &client, ip, t + 1801)
        );
        // Bound to the address, the client cookie and the secret.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(age(&secret, &client, &s, other, t).is_none());
        assert!(age(&secret, &[0; 8], &s, ip, t).is_none());
        let s2 = Secret([9; 16]);
        assert!(age(&s2, &client, &s, ip, t).is_none());
        // Serial arithmetic: a stamp just before the 32-bit wrap is young just after it.
        let s = server_cookie(&secret, &client, ip, u32::MAX - 5);
        assert_eq!(age(&secret, &client, &s, ip, 10), Some(16));
        // Other lengths and versions are not ours: a fresh cookie, not an error.
        let mut bad = client.to_vec();
        bad.extend_from_slice(&[2; 16]);
        assert!(!answer(&secret, &cookie(&bad), ip, t).valid);
    }

    #[test]
    fn secret_hex() {
        assert!(Secret::from_hex(&format!(" {SECRET}\n")).is_ok());
        assert!(Secret::from_hex("abcd")
            .unwrap_err()
            .contains("32 hexadecimal digits"));
        assert!(Secret::from_hex(&"g".repeat(32)).is_err());
        assert_eq!(format!("{:?}", Secret([1; 16])), "Secret(..)");
    }
}
