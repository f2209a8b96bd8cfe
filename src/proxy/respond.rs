//! The one place Tollgate writes a response of its own: JSON, `content-length`, the request
//! id, and `Retry-After` where the error carries one. Pingora's `respond_error*` helpers cannot
//! set headers or a content type, hence this.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::Ctx;
use crate::engine::error::GatewayError;

/// Answer `err` in the shape the client's SDK reads.
pub async fn respond(session: &mut Session, ctx: &Ctx, err: &GatewayError) -> Result<()> {
    let body = Bytes::from(err.body(ctx.shape()));
    json(
        session,
        &ctx.request_id,
        err.status(),
        body,
        err.retry_after_s(),
    )
    .await
}

pub async fn json(
    session: &mut Session,
    request_id: &str,
    status: u16,
    body: Bytes,
    retry_after_s: Option<u64>,
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(4))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("x-tollgate-request-id", request_id)?;
    if let Some(s) = retry_after_s {
        h.insert_header("retry-after", s.to_string())?;
    }
    if status >= 400 && !session.is_body_done() {
        // The request body was not read to its end: the connection cannot carry another request.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
