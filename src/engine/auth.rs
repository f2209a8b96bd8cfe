//! Project keys: which header carries one, and the SHA-256 form keys are stored and compared in.
//!
//! Keys are never kept in plaintext after load: the config index holds only digests, and a
//! presented key is hashed before lookup, with a constant-time comparison of the digests
//! (`Config::project_for_digest`). Core module: no pingora, no tokio, no I/O.

use sha2::{Digest, Sha256};

pub type KeyDigest = [u8; 32];

pub fn key_digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

pub fn parse_hex_digest(hex: &str) -> Option<KeyDigest> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The request headers that may carry a project key, all removed before forwarding.
pub const KEY_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-tollgate-key"];

/// The key a client presented: `Authorization: Bearer K`, `x-api-key: K` or `x-tollgate-key: K`,
/// in that order. `get` returns a header's raw value.
pub fn presented_key<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Option<&'a [u8]> {
    if let Some(v) = get("authorization") {
        let v = trim(v);
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            let k = trim(&v[7..]);
            if !k.is_empty() {
                return Some(k);
            }
        }
    }
    for h in ["x-api-key", "x-tollgate-key"] {
        if let Some(v) = get(h) {
            let k = trim(v);
            if !k.is_empty() {
                return Some(k);
            }
        }
    }
    None
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// A new random project key, for `tollgate key new`: `tg_` + 40 base62-ish hex characters.
pub fn new_key(random: &[u8; 20]) -> String {
    format!("tg_{}", hex(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    #[test]
    fn each_of_the_three_headers_carries_a_key() {
        assert_eq!(
            presented_key(headers(&[("authorization", "Bearer abc")])),
            Some(&b"abc"[..])
        );
        assert_eq!(
            presented_key(headers(&[("authorization", "bearer  abc ")])),
            Some(&b"abc"[..])
        );
        assert_eq!(
            presented_key(headers(&[("x-api-key", "k1")])),
            Some(&b"k1"[..])
        );
        assert_eq!(
            presented_key(headers(&[("x-tollgate-key", "k2")])),
            Some(&b"k2"[..])
        );
    }

    #[test]
    fn non_bearer_or_empty_authorization_falls_through_to_the_other_headers() {
        assert_eq!(
            presented_key(headers(&[
                ("authorization", "Basic xyz"),
                ("x-api-key", "k")
            ])),
            Some(&b"k"[..])
        );
        assert_eq!(
            presented_key(headers(&[("authorization", "Bearer   ")])),
            None
        );
        assert_eq!(presented_key(headers(&[])), None);
    }

    #[test]
    fn digest_round_trips_through_hex() {
        let d = key_digest(b"tg_dev_plaintext_key_only_for_local_use");
        assert_eq!(parse_hex_digest(&hex(&d)), Some(d));
        assert_eq!(parse_hex_digest("zz"), None);
        assert_eq!(parse_hex_digest(&"g".repeat(64)), None);
    }

    #[test]
    fn known_sha256_vector() {
        assert_eq!(
            hex(&key_digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn new_keys_have_the_tg_prefix_and_enough_entropy() {
        let k = new_key(&[7u8; 20]);
        assert!(k.starts_with("tg_"));
        assert_eq!(k.len(), 43);
    }
}
