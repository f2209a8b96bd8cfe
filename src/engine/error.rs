//! Every error Tollgate itself answers with: one enum whose variant decides the HTTP status,
//! the SPEC's `type`, the reason `code` (shared by the error body, the `reason` metric label and
//! the decision record) and the JSON body in the OpenAI or the Anthropic shape.
//!
//! Core module: no pingora, no tokio, no I/O. Provider errors are not represented here; they
//! pass through to the client unchanged.

use std::fmt::Write as _;

use crate::engine::accounts::AccountKind;

/// Which SDK family will read the error body: the Anthropic SDK only surfaces errors in its
/// own `{"type":"error","error":{...}}` shape, every other SDK reads the OpenAI shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    OpenAi,
    Anthropic,
}

/// Why a control blocked a request (the 403 `code`s of the SPEC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyCode {
    ModelNotAllowed,
    MaxTokensExceeded,
    SecretDetected,
    PatternBlocked,
    ProjectFrozen,
    UnpricedModel,
}

impl PolicyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyCode::ModelNotAllowed => "model_not_allowed",
            PolicyCode::MaxTokensExceeded => "max_tokens_exceeded",
            PolicyCode::SecretDetected => "secret_detected",
            PolicyCode::PatternBlocked => "pattern_blocked",
            PolicyCode::ProjectFrozen => "project_frozen",
            PolicyCode::UnpricedModel => "unpriced_model",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum GatewayError {
    InvalidRequest(String),
    Unauthorized(String),
    /// A known key past its `expires`: 401 with code `key_expired`.
    KeyExpired(String),
    /// The account of this kind that could not cover the request (its kind gives the code).
    BudgetExceeded(AccountKind, String),
    PolicyBlocked(PolicyCode, String),
    NotFound(String),
    MethodNotAllowed(String),
    RequestTooLarge(String),
    /// A protocol upgrade (a WebSocket) Tollgate does not serve: 426, so the client falls back
    /// to plain HTTP at once.
    UpgradeRequired(String),
    /// `retry_after_s` becomes the `Retry-After` header.
    RateLimited {
        message: String,
        retry_after_s: u64,
    },
    /// Fleet mode: the shared ledger cannot be reached (or is rebuilding) and the request needs
    /// it; 503 with `Retry-After`. A block: nothing was sent to a provider.
    LedgerUnavailable(String),
    UpstreamUnavailable(String),
    UpstreamTimeout(String),
    /// Every try failed, and the last provider that answered at all answered with this error
    /// status (its body was not kept: a later try was made after it).
    UpstreamStatus {
        status: u16,
        message: String,
    },
    /// A fault of Tollgate itself; the message is generic on purpose (details go to the log).
    Internal(String),
    /// The client went away (closed the connection, or stopped reading or sending) before the
    /// answer was through: not a block, since the request may have reached a provider. Never
    /// sent (nobody is there to read it); the record's status is 499, nginx's "client closed
    /// request", unless the provider's status was already sent.
    ClientClosed(String),
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidRequest(_) => 400,
            GatewayError::Unauthorized(_) | GatewayError::KeyExpired(_) => 401,
            GatewayError::BudgetExceeded(..) => 402,
            GatewayError::PolicyBlocked(..) => 403,
            GatewayError::NotFound(_) => 404,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::RequestTooLarge(_) => 413,
            GatewayError::UpgradeRequired(_) => 426,
            GatewayError::LedgerUnavailable(_) => 503,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::UpstreamUnavailable(_) => 502,
            GatewayError::UpstreamTimeout(_) => 504,
            GatewayError::UpstreamStatus { status, .. } => *status,
            GatewayError::Internal(_) => 500,
            GatewayError::ClientClosed(_) => 499,
        }
    }

    /// The SPEC's `type` column.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::Unauthorized(_) | GatewayError::KeyExpired(_) => "unauthorized",
            GatewayError::BudgetExceeded(..) => "budget_exceeded",
            GatewayError::PolicyBlocked(..) => "policy_blocked",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::RequestTooLarge(_) => "request_too_large",
            GatewayError::UpgradeRequired(_) => "upgrade_required",
            GatewayError::LedgerUnavailable(_) => "unavailable",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::UpstreamUnavailable(_) => "upstream_unavailable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::UpstreamStatus { .. } => "upstream_error",
            GatewayError::Internal(_) => "internal_error",
            GatewayError::ClientClosed(_) => "client_closed",
        }
    }

    /// The reason code: the finer policy code where there is one, else the type.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::PolicyBlocked(c, _) => c.as_str(),
            GatewayError::BudgetExceeded(kind, _) => kind.code(),
            GatewayError::KeyExpired(_) => "key_expired",
            GatewayError::LedgerUnavailable(_) => "ledger_unavailable",
            other => other.error_type(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            GatewayError::InvalidRequest(m)
            | GatewayError::Unauthorized(m)
            | GatewayError::KeyExpired(m)
            | GatewayError::BudgetExceeded(_, m)
            | GatewayError::PolicyBlocked(_, m)
            | GatewayError::NotFound(m)
            | GatewayError::MethodNotAllowed(m)
            | GatewayError::RequestTooLarge(m)
            | GatewayError::UpgradeRequired(m)
            | GatewayError::LedgerUnavailable(m)
            | GatewayError::UpstreamUnavailable(m)
            | GatewayError::UpstreamTimeout(m)
            | GatewayError::Internal(m)
            | GatewayError::ClientClosed(m) => m,
            GatewayError::RateLimited { message, .. }
            | GatewayError::UpstreamStatus { message, .. } => message,
        }
    }

    /// Tollgate refused the request itself (a block): nothing was sent to a provider.
    pub fn is_block(&self) -> bool {
        !matches!(
            self,
            GatewayError::UpstreamUnavailable(_)
                | GatewayError::UpstreamTimeout(_)
                | GatewayError::UpstreamStatus { .. }
                | GatewayError::Internal(_)
                | GatewayError::ClientClosed(_)
        )
    }

    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            GatewayError::LedgerUnavailable(_) => Some(1),
            _ => None,
        }
    }

    /// The JSON body in the shape the client's SDK surfaces. `reason` repeats `code` for
    /// clients that read that field (SPEC "Errors").
    pub fn body(&self, shape: ErrorShape) -> String {
        let msg = json_string(self.message());
        let ty = self.error_type();
        let code = self.code();
        match shape {
            ErrorShape::OpenAi => format!(
                r#"{{"error":{{"message":{msg},"type":"{ty}","param":null,"code":"{code}","reason":"{code}"}}}}"#
            ),
            ErrorShape::Anthropic => {
                format!(
                    r#"{{"type":"error","error":{{"type":"{ty}","message":{msg},"code":"{code}","reason":"{code}"}}}}"#
                )
            }
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status(), self.code(), self.message())
    }
}

impl std::error::Error for GatewayError {}

/// A JSON string literal for `s`; never fails, unlike going through a serializer.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_string(&mut out, s);
    out
}

/// Append `s` to `out` as a JSON string literal (with its quotes).
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    // Every byte that needs an escape is ASCII, so the runs between them are whole characters
    // and go in with one copy each.
    let mut clean = 0;
    for (i, &c) in s.as_bytes().iter().enumerate() {
        let escape = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            c if c < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[clean..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", c);
        } else {
            out.push_str(escape);
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    proptest::proptest! {
        #[test]
        fn json_strings_read_back_as_the_text(s in "(?s).{0,40}|[\\x00-\\x1f\"\\\\a-zé€😀]{0,40}") {
            let mut out = String::from("x");
            push_json_string(&mut out, &s);
            proptest::prop_assert_eq!(&out[..1], "x");
            let back: String = serde_json::from_str(&out[1..]).expect("a JSON string");
            proptest::prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn budget_error_in_openai_shape_matches_the_spec_example() {
        let e = GatewayError::BudgetExceeded(
            AccountKind::Project,
            "Project checkout-bot has spent its month budget of $50.00".into(),
        );
        let v: Value = serde_json::from_str(&e.body(ErrorShape::OpenAi)).unwrap();
        assert_eq!(e.status(), 402);
        assert_eq!(v["error"]["type"], "budget_exceeded");
        assert_eq!(v["error"]["code"], "budget_exceeded");
        assert_eq!(
            v["error"]["message"],
            "Project checkout-bot has spent its month budget of $50.00"
        );
    }

    #[test]
    fn each_kind_of_account_refuses_with_its_own_code_and_an_expired_key_with_key_expired() {
        for (kind, code) in [
            (AccountKind::Project, "budget_exceeded"),
            (AccountKind::Team, "team_budget_exceeded"),
            (AccountKind::Key, "key_budget_exceeded"),
            (AccountKind::User, "user_budget_exceeded"),
        ] {
            let e = GatewayError::BudgetExceeded(kind, "m".into());
            assert_eq!(
                (e.status(), e.error_type(), e.code()),
                (402, "budget_exceeded", code)
            );
        }
        let e = GatewayError::KeyExpired("Key ci expired".into());
        assert_eq!(
            (e.status(), e.error_type(), e.code()),
            (401, "unauthorized", "key_expired")
        );
    }

    #[test]
    fn policy_block_carries_the_finer_code_in_both_shapes() {
        let e = GatewayError::PolicyBlocked(PolicyCode::SecretDetected, "no".into());
        let o: Value = serde_json::from_str(&e.body(ErrorShape::OpenAi)).unwrap();
        let a: Value = serde_json::from_str(&e.body(ErrorShape::Anthropic)).unwrap();
        assert_eq!(o["error"]["type"], "policy_blocked");
        assert_eq!(o["error"]["code"], "secret_detected");
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "policy_blocked");
        assert_eq!(a["error"]["code"], "secret_detected");
        assert_eq!(e.status(), 403);
    }

    #[test]
    fn every_error_body_carries_reason_equal_to_code() {
        for e in [
            GatewayError::PolicyBlocked(PolicyCode::ProjectFrozen, "f".into()),
            GatewayError::BudgetExceeded(AccountKind::Project, "b".into()),
            GatewayError::BudgetExceeded(AccountKind::Team, "t".into()),
            GatewayError::KeyExpired("k".into()),
            GatewayError::Unauthorized("u".into()),
            GatewayError::UpstreamUnavailable("x".into()),
        ] {
            for shape in [ErrorShape::OpenAi, ErrorShape::Anthropic] {
                let v: Value = serde_json::from_str(&e.body(shape)).unwrap();
                assert_eq!(v["error"]["reason"], e.code(), "{shape:?}: {v}");
                assert_eq!(v["error"]["reason"], v["error"]["code"], "{v}");
            }
        }
    }

    #[test]
    fn messages_with_quotes_and_control_characters_stay_valid_json() {
        let e = GatewayError::InvalidRequest("bad \"model\"\n\u{1}\\".into());
        let v: Value = serde_json::from_str(&e.body(ErrorShape::OpenAi)).unwrap();
        assert_eq!(v["error"]["message"], "bad \"model\"\n\u{1}\\");
    }

    #[test]
    fn every_status_row_of_the_spec_is_mapped() {
        let rows = [
            (
                GatewayError::InvalidRequest(String::new()),
                400,
                "invalid_request",
            ),
            (
                GatewayError::Unauthorized(String::new()),
                401,
                "unauthorized",
            ),
            (GatewayError::NotFound(String::new()), 404, "not_found"),
            (
                GatewayError::MethodNotAllowed(String::new()),
                405,
                "method_not_allowed",
            ),
            (
                GatewayError::RequestTooLarge(String::new()),
                413,
                "request_too_large",
            ),
            (
                GatewayError::RateLimited {
                    message: String::new(),
                    retry_after_s: 3,
                },
                429,
                "rate_limited",
            ),
            (
                GatewayError::UpstreamUnavailable(String::new()),
                502,
                "upstream_unavailable",
            ),
            (
                GatewayError::UpstreamTimeout(String::new()),
                504,
                "upstream_timeout",
            ),
        ];
        for (e, status, ty) in rows {
            assert_eq!((e.status(), e.error_type(), e.code()), (status, ty, ty));
        }
    }

    #[test]
    fn a_client_that_went_away_is_499_client_closed_and_no_block() {
        let e = GatewayError::ClientClosed("gone".into());
        assert_eq!((e.status(), e.code()), (499, "client_closed"));
        assert!(!e.is_block(), "the request may have reached a provider");
        assert!(GatewayError::InvalidRequest(String::new()).is_block());
    }
}
