//! The response cache's rules (SPEC "Response cache"): which requests may be answered from it,
//! what the client asked with `x-tollgate-cache`, and the key of an entry.
//!
//! The key is the SHA-256 of the project, the endpoint, the provider-side model and the whole
//! body Tollgate sends upstream (after its rewrites), each length-prefixed so no two different
//! tuples hash alike: entries never cross projects, and two bodies that differ in one byte are
//! two entries.
//!
//! Engine module: no pingora, no tokio, no I/O, no clock.

use sha2::{Digest, Sha256};

use crate::engine::error::GatewayError;
use crate::engine::provider::Endpoint;

/// A cached response larger than this is not stored (1 MiB: every chat or message answer of a
/// normal size, and long streams, fit; an embedding of a large batch may not).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// The key of an entry.
pub type Key = [u8; 32];

/// What the request asked of the cache (`x-tollgate-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Read, and store on a miss.
    Normal,
    /// Neither read nor store.
    Skip,
    /// Store, but do not read.
    Refresh,
}

impl Directive {
    /// The header's value (`None`: not sent). Anything but `skip` or `refresh` is a 400.
    pub fn parse(header: Option<&[u8]>) -> Result<Directive, GatewayError> {
        let Some(v) = header else {
            return Ok(Directive::Normal);
        };
        let v = std::str::from_utf8(v).unwrap_or("").trim();
        if v.eq_ignore_ascii_case("skip") {
            Ok(Directive::Skip)
        } else if v.eq_ignore_ascii_case("refresh") {
            Ok(Directive::Refresh)
        } else {
            Err(GatewayError::InvalidRequest(format!(
                "x-tollgate-cache must be `skip` or `refresh`, not {:?}",
                crate::engine::admission::truncate(v, 40)
            )))
        }
    }
}

/// The endpoints whose answers are cached: the ones that cost money.
pub fn cacheable(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Responses
            | Endpoint::Messages
            | Endpoint::Embeddings
    )
}

/// The entry key of a request.
pub fn key(project: &str, endpoint: Endpoint, upstream_model: &str, body: &[u8]) -> Key {
    let mut h = Sha256::new();
    for part in [
        project.as_bytes(),
        endpoint.as_str().as_bytes(),
        upstream_model.as_bytes(),
        body,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_separates_projects_endpoints_models_and_every_byte_of_the_body() {
        let b = br#"{"model":"gpt-4o-mini","messages":[]}"#;
        let k = key("a", Endpoint::ChatCompletions, "gpt-4o-mini", b);
        assert_eq!(k, key("a", Endpoint::ChatCompletions, "gpt-4o-mini", b));
        assert_ne!(k, key("b", Endpoint::ChatCompletions, "gpt-4o-mini", b));
        assert_ne!(k, key("a", Endpoint::Responses, "gpt-4o-mini", b));
        assert_ne!(k, key("a", Endpoint::ChatCompletions, "gpt-4o", b));
        let mut other = b.to_vec();
        other[2] = b'M';
        assert_ne!(
            k,
            key("a", Endpoint::ChatCompletions, "gpt-4o-mini", &other)
        );
        // Length prefixes: moving a byte from one field to the next is another key.
        assert_ne!(
            key("ab", Endpoint::ChatCompletions, "c", b"d"),
            key("a", Endpoint::ChatCompletions, "bc", b"d")
        );
    }

    #[test]
    fn the_directive_is_skip_refresh_or_nothing() {
        assert_eq!(Directive::parse(None).unwrap(), Directive::Normal);
        assert_eq!(Directive::parse(Some(b"skip")).unwrap(), Directive::Skip);
        assert_eq!(
            Directive::parse(Some(b" Refresh ")).unwrap(),
            Directive::Refresh
        );
        let e = Directive::parse(Some(b"always")).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message().contains("\"always\""), "{}", e.message());
    }

    #[test]
    fn only_endpoints_that_cost_money_are_cached() {
        assert!(cacheable(Endpoint::ChatCompletions));
        assert!(cacheable(Endpoint::Messages));
        assert!(!cacheable(Endpoint::CountTokens));
        assert!(!cacheable(Endpoint::Models));
    }
}
