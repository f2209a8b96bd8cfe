//! The per-request state, alive from `new_ctx` to the end of `logging`, grouped by who sets
//! it: what admission learned and holds ([`Admitted`]), the tries at providers ([`Attempts`]),
//! and the response of the current try ([`Upstream`]). Each group starts from `Default`, and a
//! new try resets only [`Upstream`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;

use crate::engine::admission::Seen;
use crate::engine::config::Config;
use crate::engine::error::{ErrorShape, GatewayError};
use crate::engine::pricing::{Nanos, Price};
use crate::engine::route::{Plan, ProviderIdx};
use crate::engine::usage::UsageScanner;
use crate::ledger::fleet::FleetHold;
use crate::ledger::Reservation;

pub struct Ctx {
    /// The response cache's part (`None`: the project has none, or the endpoint is not cached).
    pub cache: Option<CacheState>,
    pub request_id: String,
    /// The id as the `x-tollgate-request-id` value, upstream and downstream.
    pub request_id_value: HeaderValue,
    pub started: Instant,
    /// Wall-clock arrival time: the decision record's time, so records order by arrival.
    pub started_ms: i64,
    /// The config snapshot this request lives on, whatever reloads happen meanwhile.
    pub cfg: Option<Arc<Config>>,
    pub shape: ErrorShape,
    /// What admission learned (endpoint, project, key id, model), also for a blocked request.
    pub seen: Seen,
    pub admitted: Admitted,
    pub attempts: Attempts,
    pub upstream: Upstream,
    /// What Tollgate answered itself (a block or an upstream failure), for the record.
    pub error: Option<GatewayError>,
    /// What a cache hit's answer told the client (`report_cost`); a provider's answer keeps
    /// its own in its scanner.
    pub reported: Option<crate::engine::usage::Reported>,
    _in_flight: InFlight,
}

impl Ctx {
    pub fn new(request_id: String) -> Ctx {
        // Ids are hex digits, always a valid header value.
        let request_id_value =
            HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("-"));
        Ctx {
            cache: None,
            request_id,
            request_id_value,
            started: Instant::now(),
            started_ms: crate::clock::unix_ms(),
            cfg: None,
            shape: ErrorShape::OpenAi,
            seen: Seen::default(),
            admitted: Admitted::default(),
            attempts: Attempts::default(),
            upstream: Upstream::default(),
            error: None,
            reported: None,
            _in_flight: InFlight::new(),
        }
    }

    pub fn shape(&self) -> ErrorShape {
        self.shape
    }
}

/// The response cache's part in one request of a project with a cache.
pub struct CacheState {
    /// `x-tollgate-cache` on the answer: `hit`, `miss` or `skip`.
    pub result: &'static str,
    pub key: crate::engine::cache::Key,
    pub ttl: std::time::Duration,
    /// The provider's body so far, while it may still be stored (a miss or a refresh).
    pub recording: Option<Recording>,
    pub status: u16,
    pub content_type: Option<String>,
    /// The body ran to its end.
    pub complete: bool,
    /// A hit: what the stored answer cost when it was made.
    pub saved: Nanos,
}

/// The provider's body chunks as received, kept by reference (pingora copies each chunk it
/// reads into its own exact-size buffer, so holding one pins no larger allocation). A one-chunk
/// answer is stored as it is; a longer one is joined once, at its end.
#[derive(Default)]
pub struct Recording {
    chunks: Vec<bytes::Bytes>,
    len: usize,
}

impl Recording {
    /// Add a chunk; `false` (and nothing added) if the body would pass `limit` bytes.
    pub fn push(&mut self, chunk: &bytes::Bytes, limit: usize) -> bool {
        if self.len + chunk.len() > limit {
            return false;
        }
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk.clone());
        }
        true
    }

    /// The whole body.
    pub fn into_bytes(self) -> bytes::Bytes {
        match self.chunks.as_slice() {
            [one] => one.clone(),
            all => all.concat().into(),
        }
    }
}

/// What an admitted request holds until it finishes.
#[derive(Default)]
pub struct Admitted {
    /// Money held for this request until `logging` settles it (or drop releases it). In fleet
    /// mode this is the instance's own share, not checked against the budget: [`Admitted::hold`]
    /// is the fleet's.
    pub reservation: Option<Reservation>,
    /// Fleet mode: the hold in Redis (budget and rate limits across the fleet).
    pub hold: Option<FleetHold>,
    /// During a binary upgrade, after the hand-over: the hold on the successor.
    pub remote: Option<crate::handover::RemoteHold>,
    /// The matched price (None: unpriced model, cost unknown).
    pub price: Option<Price>,
    /// The bounded `model` label: the matched price key.
    pub price_key: Option<String>,
    /// The exact body to send upstream.
    pub body: Option<Bytes>,
    /// The body's size as the client sent it (bounds the prompt when no usage is reported).
    pub request_bytes: usize,
    pub strip_usage_chunk: bool,
    /// The project's `report_cost`: the response's usage gets the cost and the duration.
    pub report_cost: bool,
    /// Remaining budget after this request's reservation, for the response header.
    pub remaining: Option<Nanos>,
}

/// How the request moves to its next try after a provider's error status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The plan's next try, which may be the same provider (its `retries`).
    Next,
    /// The next provider: this one asked for a longer wait than the request can give.
    OtherProvider,
}

/// The tries at providers.
#[derive(Default)]
pub struct Attempts {
    /// The providers this request may try, and which try is current.
    pub plan: Plan,
    /// The provider of the current (finally: the last) try.
    pub provider: Option<ProviderIdx>,
    /// The provider of each try started, in order (the record's `providers_tried`).
    pub tried: Vec<ProviderIdx>,
    /// The try whose outcome is not recorded yet.
    pub open: Option<ProviderIdx>,
    /// No new try starts after this.
    pub deadline: Option<Instant>,
    /// Set when `upstream_response_filter` turned an error status into a retry.
    pub retry: Option<Retry>,
    /// Wait this long (a provider's short `Retry-After`, or a backoff) before the next try.
    pub wait_before: Option<Duration>,
    /// The last error response a provider gave on a try that was retried: the client gets it
    /// if no later try gets an answer at all.
    pub last_answer: Option<Box<ResponseHeader>>,
}

impl Attempts {
    /// Tries started (the access log's `attempts=`).
    pub fn count(&self) -> u32 {
        u32::try_from(self.tried.len()).unwrap_or(u32::MAX)
    }
}

/// The current try's response.
#[derive(Default)]
pub struct Upstream {
    pub scanner: Option<UsageScanner>,
    pub status: Option<u16>,
    pub first_byte: Option<Instant>,
}

/// Requests being handled now: for the idle check of a graceful stop, and the
/// `tollgate_requests_in_flight` gauge.
static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// Requests alive now (contexts created and not yet dropped).
pub fn in_flight() -> i64 {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// Counts the request for exactly as long as its ctx lives.
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = crate::metrics::get() {
            m.in_flight.inc();
        }
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        if let Some(m) = crate::metrics::get() {
            m.in_flight.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Recording;
    use bytes::Bytes;

    #[test]
    fn a_recording_keeps_one_chunk_as_it_is_and_joins_several_within_the_limit() {
        let one = Bytes::from_static(b"{\"id\":1}");
        let mut r = Recording::default();
        assert!(r.push(&one, 100));
        let body = r.into_bytes();
        assert_eq!(body, one);
        assert_eq!(body.as_ptr(), one.as_ptr(), "one chunk is not copied");

        let mut r = Recording::default();
        for part in [&b"data: a\n\n"[..], b"", b"data: b\n\n"] {
            assert!(r.push(&Bytes::copy_from_slice(part), 18));
        }
        assert!(!r.push(&Bytes::from_static(b"x"), 18), "past the limit");
        assert_eq!(
            r.into_bytes(),
            Bytes::from_static(b"data: a\n\ndata: b\n\n")
        );
        assert_eq!(Recording::default().into_bytes(), Bytes::new());
    }
}
