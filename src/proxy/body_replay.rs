//! Forwarding request bodies larger than Pingora's 64 KiB retry buffer, with stock crates.
//!
//! Tollgate must read the whole request body in `request_filter` (the budget, the policy and
//! the route all depend on it) and still forward it. Pingora 0.9.1 forwards a body that a
//! filter consumed only by replaying its *retry buffer*, which holds at most 64 KiB
//! (`BODY_BUF_LIMIT`); past that, `get_retry_buffer()` is `None`, no body bytes are sent, and
//! the upstream waits for a body that never comes.
//!
//! The proxy asks the downstream session for that buffer through `ServerSession`, an enum whose
//! `Custom` variant dispatches to a `custom::server::Session` trait object. So for a large body
//! we swap the real downstream session for a [`ReplayBody`]: a `Custom` session that owns the
//! real one and forwards every call to it, except that it answers `get_retry_buffer()` with the
//! body we already hold. The proxy then replays it exactly as it replays a small buffered body:
//! one `request_body_filter(Some(body), end_of_stream = true)` call, in which the gateway puts
//! the (possibly rewritten) body it wants sent.
//!
//! Costs and limits, all confined to bodies over 64 KiB:
//! - Pingora does not hand a `Custom` downstream connection back for keep-alive, so the
//!   response says `Connection: close` and the client opens a new connection next time.
//! - The trait is public but `#[doc(hidden)]` in pingora-core, which is why the version is
//!   pinned with `=` in Cargo.toml; an upgrade must re-run the large-body integration test.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::{Error, ErrorType, Result};

type MessageReader =
    Box<dyn futures_core::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>;

/// A downstream session that replays a body already read.
pub struct ReplayBody {
    /// `None` only for the instant of the swap in [`install`].
    inner: Option<Box<ServerSession>>,
    body: Bytes,
    /// Returned by `req_header*` in that instant; never seen by anyone.
    placeholder: RequestHeader,
}

/// Put a [`ReplayBody`] holding `body` in place of `slot`'s session.
pub fn install(slot: &mut Box<ServerSession>, body: Bytes) -> Result<()> {
    let placeholder = RequestHeader::build("GET", b"/", None)?;
    let empty = ReplayBody {
        inner: None,
        body: Bytes::new(),
        placeholder: placeholder.clone(),
    };
    let mut real = std::mem::replace(slot, Box::new(ServerSession::new_custom(Box::new(empty))));
    // A Custom downstream is never reused for keep-alive: tell the client now.
    real.set_keepalive(None);
    **slot = ServerSession::new_custom(Box::new(ReplayBody {
        inner: Some(real),
        body,
        placeholder,
    }));
    Ok(())
}

fn gone() -> Box<Error> {
    Error::explain(
        ErrorType::InternalError,
        "downstream session is being replaced",
    )
}

impl ReplayBody {
    fn s(&mut self) -> Result<&mut ServerSession> {
        self.inner.as_deref_mut().ok_or_else(gone)
    }
}

#[async_trait]
impl CustomSession for ReplayBody {
    fn req_header(&self) -> &RequestHeader {
        match &self.inner {
            Some(s) => s.req_header(),
            None => &self.placeholder,
        }
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        match &mut self.inner {
            Some(s) => s.req_header_mut(),
            None => &mut self.placeholder,
        }
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        self.s()?.read_request_body().await
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        self.s()?.drain_request_body().await
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        let s = self.s()?;
        s.write_response_header(resp).await?;
        if end {
            s.finish_body().await?;
        }
        Ok(())
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        let s = self.s()?;
        s.write_response_header_ref(resp).await?;
        if end {
            s.finish_body().await?;
        }
        Ok(())
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.s()?.write_response_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: http::HeaderMap) -> Result<()> {
        self.s()?.write_response_trailers(trailers).await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        self.s()?.response_duplex_vec(tasks).await
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        if let Some(s) = self.inner.as_deref_mut() {
            s.set_read_timeout(timeout)
        }
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.inner.as_deref().and_then(|s| s.get_read_timeout())
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        if let Some(s) = self.inner.as_deref_mut() {
            s.set_write_timeout(timeout)
        }
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.inner.as_deref().and_then(|s| s.get_write_timeout())
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        if let Some(s) = self.inner.as_deref_mut() {
            s.set_total_drain_timeout(timeout)
        }
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.inner
            .as_deref()
            .and_then(|s| s.get_total_drain_timeout())
    }

    fn request_summary(&self) -> String {
        self.inner
            .as_deref()
            .map(|s| s.request_summary())
            .unwrap_or_default()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.inner.as_deref().and_then(|s| s.response_written())
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        if let Some(s) = self.inner.as_deref_mut() {
            s.shutdown().await
        }
    }

    fn is_body_done(&mut self) -> bool {
        self.inner.as_deref_mut().is_none_or(|s| s.is_body_done())
    }

    async fn finish(&mut self) -> Result<()> {
        self.s()?.finish_body().await
    }

    fn is_body_empty(&mut self) -> bool {
        self.body.is_empty()
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        self.s()?.read_body_or_idle(no_body_expected).await
    }

    fn body_bytes_sent(&self) -> usize {
        self.inner.as_deref().map_or(0, |s| s.body_bytes_sent())
    }

    fn body_bytes_read(&self) -> usize {
        self.inner.as_deref().map_or(0, |s| s.body_bytes_read())
    }

    fn digest(&self) -> Option<&Digest> {
        self.inner.as_deref().and_then(|s| s.digest())
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.inner.as_deref_mut().and_then(|s| s.digest_mut())
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.inner.as_deref().and_then(|s| s.client_addr())
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.inner.as_deref().and_then(|s| s.server_addr())
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.inner
            .as_deref()
            .map(|s| s.to_h1_raw())
            .unwrap_or_default()
    }

    fn enable_retry_buffering(&mut self) {}

    fn retry_buffer_truncated(&self) -> bool {
        false
    }

    /// The whole point: the proxy replays this as the request body.
    fn get_retry_buffer(&self) -> Option<Bytes> {
        Some(self.body.clone())
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(&mut self) -> Option<MessageReader> {
        None
    }

    fn restore_custom_message_reader(&mut self, _reader: MessageReader) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}
