//! The one place Tollgate writes a response of its own: JSON, `content-length`, the request
//! id, and `Retry-After` where the error carries one. Pingora's `respond_error*` helpers cannot
//! set headers or a content type, hence this.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::ctx::Ctx;
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

/// Answer a cache hit: the stored status, content type and body; a stream as a stream, with
/// the usage chunk taken out when this client did not ask for it (as for a live call). With
/// `report_cost` the usage says what the hit cost (0) and its own duration; the entry keeps
/// the provider's bytes.
pub async fn cached(
    session: &mut Session,
    ctx: &mut Ctx,
    entry: &crate::cache::Entry,
) -> Result<()> {
    use crate::engine::usage::{Charge, Feed, UsageScanner};
    let format = ctx.seen.endpoint.and_then(|e| e.wire_format());
    let strip = entry.sse && ctx.admitted.strip_usage_chunk;
    let body = match format {
        Some(f) if strip || ctx.admitted.report_cost => {
            let mut scanner = UsageScanner::new(f, entry.sse, strip);
            if ctx.admitted.report_cost {
                scanner = scanner.with_report(Charge::Free, ctx.admitted.request_bytes);
                scanner.set_elapsed_ms(ctx.started.elapsed().as_secs_f64() * 1000.0);
            }
            let mut out = match scanner.feed_bytes(&entry.body) {
                Feed::Pass => entry.body.to_vec(),
                Feed::Replace(b) => b.to_vec(),
            };
            if let Some(rest) = scanner.finish() {
                out.extend_from_slice(&rest);
            }
            ctx.reported = scanner.cost_report();
            Bytes::from(out)
        }
        _ => entry.body.clone(),
    };
    let mut h = ResponseHeader::build(entry.status, Some(5))?;
    if let Some(ct) = &entry.content_type {
        h.insert_header("content-type", ct.as_str())?;
    }
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("x-tollgate-request-id", ctx.request_id.as_str())?;
    h.insert_header("x-tollgate-cache", "hit")?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Answer with the status of a provider's earlier error answer (`last`), its `Retry-After` and
/// its request id header, and `err`'s JSON body: the provider's own body was not kept, because
/// a later try was made after it.
pub async fn provider_error(
    session: &mut Session,
    ctx: &Ctx,
    err: &GatewayError,
    last: &ResponseHeader,
) -> Result<()> {
    let body = Bytes::from(err.body(ctx.shape()));
    let mut h = ResponseHeader::build(last.status, Some(6))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("x-tollgate-request-id", ctx.request_id.as_str())?;
    for name in ["retry-after", "x-request-id", "request-id"] {
        if let Some(v) = last.headers.get(name) {
            h.insert_header(name, v.clone())?;
        }
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
