//! Providers and their wire formats: where a provider lives (`base_url` split into scheme, host,
//! port and path prefix), how it wants its credential, and which usage format each endpoint
//! speaks.
//!
//! Core module: no pingora, no tokio, no I/O. The credential is read from the environment by
//! `config` and kept in a [`Secret`], whose `Debug` never prints it.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};

use crate::engine::usage::WireFormat;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI or any server that speaks its API (Azure-style proxies, vLLM, partner gateways).
    OpenAi,
    Anthropic,
}

impl ProviderKind {
    pub fn parse(s: &str) -> Option<ProviderKind> {
        match s {
            "openai" => Some(ProviderKind::OpenAi),
            "anthropic" => Some(ProviderKind::Anthropic),
            _ => None,
        }
    }
}

/// A provider credential. Deliberately no `Display` and a redacting `Debug`, so it cannot end
/// up in a log line, an error or a metric by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The parts of a `base_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub path: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "base_url {url:?} must start with http:// or https://"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("base_url {url:?} needs a host (and no user info)"));
        }
        if path.contains(['?', '#']) {
            return Err(format!(
                "base_url {url:?} must not have a query or fragment"
            ));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("base_url {url:?} has a bad host or port"))?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        Ok(BaseUrl {
            tls,
            host: host.to_string(),
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The `Host` header value: the port only when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (authority, None),
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then_some((host, port))
}

#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    /// The wire format (requests use `wire`, built from it at load; token counting asks it).
    pub kind: ProviderKind,
    pub base: BaseUrl,
    /// `None` when the config names no `api_key_env` (a local server that needs no key).
    /// Requests send `wire.credential` (built from it at load); only the config's tests read
    /// this back.
    #[cfg_attr(not(test), allow(dead_code))]
    pub credential: Option<Secret>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// The header values every request to this provider carries, built once per config.
    pub wire: WireHeaders,
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Header values built (and validated) when the config loads, so a request only clones them:
/// cloning a `HeaderValue` is a reference count, formatting and validating one is not.
#[derive(Clone, Debug)]
pub struct WireHeaders {
    pub host: HeaderValue,
    /// The provider credential in its own scheme (`Authorization: Bearer K` for openai,
    /// `x-api-key: K` for anthropic). Marked sensitive, so `Debug` shows no secret.
    pub credential: Option<(HeaderName, HeaderValue)>,
    /// Sent to anthropic when the client sent no `anthropic-version`.
    pub anthropic_version: Option<HeaderValue>,
    /// The provider's name, for the `x-tollgate-provider` response header.
    pub name: HeaderValue,
}

impl WireHeaders {
    /// `Err((field, message))`: the config field whose value cannot be carried in an HTTP
    /// header (a credential with a newline, say). The message never repeats a credential.
    pub fn new(
        kind: ProviderKind,
        name: &str,
        host_header: &str,
        credential: Option<&Secret>,
        anthropic_version: &str,
    ) -> Result<WireHeaders, (&'static str, String)> {
        let host = HeaderValue::from_str(host_header).map_err(|_| {
            (
                "base_url",
                format!("host {host_header:?} cannot be sent as a Host header"),
            )
        })?;
        let name = HeaderValue::from_str(name)
            .map_err(|_| ("name", format!("{name:?} cannot be sent in a header")))?;
        let credential = match credential {
            None => None,
            Some(c) => {
                let (header, text) = match kind {
                    ProviderKind::OpenAi => (AUTHORIZATION, format!("Bearer {}", c.expose())),
                    ProviderKind::Anthropic => (X_API_KEY.clone(), c.expose().to_string()),
                };
                let mut v = HeaderValue::from_str(&text).map_err(|_| {
                    (
                        "api_key_env",
                        "the key in this variable has characters an HTTP header cannot carry \
                         (a newline or a control character?)"
                            .to_string(),
                    )
                })?;
                v.set_sensitive(true);
                Some((header, v))
            }
        };
        let anthropic_version = match kind {
            ProviderKind::OpenAi => None,
            ProviderKind::Anthropic => {
                Some(HeaderValue::from_str(anthropic_version).map_err(|_| {
                    (
                        "anthropic_version",
                        format!("{anthropic_version:?} cannot be sent in a header"),
                    )
                })?)
            }
        };
        Ok(WireHeaders {
            host,
            credential,
            anthropic_version,
            name,
        })
    }
}

impl Provider {
    /// The path to request upstream: the base URL's path prefix, then the client's path.
    pub fn upstream_path(&self, path_and_query: &str) -> String {
        let mut p = String::with_capacity(self.base.path.len() + path_and_query.len());
        p.push_str(&self.base.path);
        p.push_str(path_and_query);
        p
    }
}

/// The endpoints Tollgate serves, each with the wire format its responses come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    /// Anthropic's `POST /v1/messages/count_tokens`: forwarded, never charged.
    CountTokens,
    Models,
    /// `GET /v1/models/{id}`: one model this project may use.
    Model,
    Healthz,
    /// `GET /` and `HEAD /`: clients probe the base URL.
    Root,
}

impl Endpoint {
    /// Path (without query) → endpoint. A trailing slash is tolerated because some clients add
    /// one.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        // Claude Code probes the base URL (`HEAD /`, and `HEAD /api/hello` when its
        // non-essential traffic is on) before its first call.
        if path == "/" || path == "/api/hello" {
            return Some(Endpoint::Root);
        }
        let path = path.strip_suffix('/').unwrap_or(path);
        if path
            .strip_prefix("/v1/models/")
            .is_some_and(|id| !id.is_empty())
        {
            return Some(Endpoint::Model);
        }
        Some(match path {
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/completions" => Endpoint::Completions,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/v1/responses" => Endpoint::Responses,
            "/v1/messages" => Endpoint::Messages,
            "/v1/messages/count_tokens" => Endpoint::CountTokens,
            "/v1/models" => Endpoint::Models,
            "/healthz" => Endpoint::Healthz,
            _ => return None,
        })
    }

    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Models | Endpoint::Model | Endpoint::Healthz | Endpoint::Root => "GET",
            _ => "POST",
        }
    }

    /// Whether `method` is served here (`HEAD` wherever `GET` is).
    pub fn allows(self, method: &str) -> bool {
        method == self.method() || (method == "HEAD" && self.method() == "GET")
    }

    /// Anthropic's paths answer in Anthropic's error shape, whatever the outcome.
    pub fn is_anthropic_path(path: &str) -> bool {
        path == "/v1/messages" || path.starts_with("/v1/messages/")
    }

    /// Requests to this endpoint get a decision record (the LLM calls, charged or not).
    pub fn is_recorded(self) -> bool {
        self.wire_format().is_some() || self == Endpoint::CountTokens
    }

    pub fn wire_format(self) -> Option<WireFormat> {
        Some(match self {
            Endpoint::ChatCompletions => WireFormat::OpenAiChat,
            Endpoint::Completions => WireFormat::OpenAiCompletions,
            Endpoint::Embeddings => WireFormat::OpenAiEmbeddings,
            Endpoint::Responses => WireFormat::OpenAiResponses,
            Endpoint::Messages => WireFormat::AnthropicMessages,
            Endpoint::CountTokens
            | Endpoint::Models
            | Endpoint::Model
            | Endpoint::Healthz
            | Endpoint::Root => return None,
        })
    }

    /// The request format whose prompt text policy scans.
    pub fn prompt_format(self) -> Option<crate::engine::prompt::Format> {
        use crate::engine::prompt::Format;
        Some(match self {
            Endpoint::ChatCompletions => Format::Chat,
            Endpoint::Completions => Format::Completions,
            Endpoint::Embeddings => Format::Embeddings,
            Endpoint::Responses => Format::Responses,
            Endpoint::Messages | Endpoint::CountTokens => Format::Messages,
            Endpoint::Models | Endpoint::Model | Endpoint::Healthz | Endpoint::Root => return None,
        })
    }

    /// Only these accept `stream_options.include_usage`.
    pub fn supports_stream_options(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    /// The body field that caps output tokens, where Tollgate injects a cap. OpenAI chat uses
    /// `max_completion_tokens` (`max_tokens` is refused by reasoning models).
    pub fn max_tokens_field(self) -> Option<&'static str> {
        match self {
            Endpoint::ChatCompletions => Some("max_completion_tokens"),
            Endpoint::Completions | Endpoint::Messages => Some("max_tokens"),
            Endpoint::Responses => Some("max_output_tokens"),
            _ => None,
        }
    }

    /// Bounded label value for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Models => "models",
            Endpoint::Model => "model",
            Endpoint::Healthz => "healthz",
            Endpoint::Root => "root",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_split_into_scheme_host_port_and_path() {
        let b = BaseUrl::parse("https://api.openai.com").unwrap();
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.path.as_str()),
            (true, "api.openai.com", 443, "")
        );
        assert_eq!(b.host_header(), "api.openai.com");
        let b = BaseUrl::parse("http://127.0.0.1:8000/openai/").unwrap();
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.path.as_str()),
            (false, "127.0.0.1", 8000, "/openai")
        );
        assert_eq!(b.host_header(), "127.0.0.1:8000");
        let b = BaseUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 9000));
        assert_eq!(b.host_header(), "[::1]:9000");
    }

    #[test]
    fn bad_base_urls_are_rejected_with_a_reason() {
        for bad in [
            "api.openai.com",
            "ftp://x",
            "https://",
            "https://h:99999",
            "https://u@h",
            "https://h/?q=1",
            "https://a b",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Secret::new("sk-live-123".into());
        assert!(!format!("{s:?}").contains("sk-live"));
        let w = WireHeaders::new(ProviderKind::OpenAi, "openai", "h", Some(&s), "").unwrap();
        assert!(!format!("{w:?}").contains("sk-live"), "{w:?}");
    }

    #[test]
    fn wire_headers_put_the_credential_in_each_providers_scheme() {
        let s = Secret::new("sk-1".into());
        let o =
            WireHeaders::new(ProviderKind::OpenAi, "o", "api.openai.com", Some(&s), "").unwrap();
        let (name, value) = o.credential.unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer sk-1")
        );
        assert!(o.anthropic_version.is_none());
        let a = WireHeaders::new(
            ProviderKind::Anthropic,
            "a",
            "h:8443",
            Some(&s),
            "2023-06-01",
        )
        .unwrap();
        let (name, value) = a.credential.unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("x-api-key", "sk-1")
        );
        assert_eq!(a.anthropic_version.unwrap(), "2023-06-01");
        assert_eq!(a.host, "h:8443");
    }

    #[test]
    fn a_credential_a_header_cannot_carry_is_an_error_that_does_not_echo_it() {
        let s = Secret::new("sk-secret\nX-Evil: 1".into());
        let (field, e) =
            WireHeaders::new(ProviderKind::OpenAi, "o", "h", Some(&s), "").unwrap_err();
        assert_eq!(field, "api_key_env");
        assert!(!e.contains("sk-secret"), "{e}");
    }

    #[test]
    fn upstream_path_keeps_the_base_prefix() {
        let p = Provider {
            name: "x".into(),
            kind: ProviderKind::OpenAi,
            base: BaseUrl::parse("http://h/api").unwrap(),
            credential: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            wire: WireHeaders::new(ProviderKind::OpenAi, "x", "h", None, "").unwrap(),
        };
        assert_eq!(
            p.upstream_path("/v1/chat/completions?x=1"),
            "/api/v1/chat/completions?x=1"
        );
    }

    #[test]
    fn endpoints_are_recognised_with_or_without_trailing_slash() {
        assert_eq!(
            Endpoint::from_path("/v1/messages/"),
            Some(Endpoint::Messages)
        );
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(Endpoint::from_path("/v2/chat"), None);
    }
}
