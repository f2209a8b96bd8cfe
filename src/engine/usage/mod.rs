//! Token usage from upstream response bodies, found while the bytes stream past.
//!
//! # What this module owns
//!
//! [`UsageScanner`] watches one response body, chunk by chunk as Pingora's
//! `response_body_filter` hands it over, and extracts the token usage the provider reported
//! ([`Usage`]), the volume of output text actually delivered (for an estimate when usage is
//! missing or the stream was cut), and any error event. It passes the bytes through untouched;
//! the exceptions are removing the OpenAI usage-only chunk that the gateway itself asked for
//! (see [`UsageScanner::new`]) and, for a project with `report_cost`, adding the call's cost and
//! duration to the usage object (see [`UsageScanner::with_report`] and `report.rs`).
//!
//! This is core code: it must not import pingora or tokio, do I/O, read a clock, or panic on
//! any input. Every function here is pure state-machine work over byte slices, which is what
//! lets the tests below feed every fixture split at every byte offset.
//!
//! # How the incremental parsing works
//!
//! Chunks split the body anywhere: inside a UTF-8 sequence, between `\r` and `\n`, inside a
//! JSON key. Nothing here assumes otherwise; "need more bytes" is the normal state.
//!
//! * **SSE** (`text/event-stream`): `sse.rs` is a line state machine per the WHATWG spec
//!   (`\n`, `\r\n` or `\r` line ends; `data:` with one optional space; several `data:` lines
//!   joined by `\n`; comments and `id:`/`retry:` ignored; an event ends at a blank line). A data
//!   line that lies wholly inside one chunk is handed over as a slice of that chunk, without a
//!   copy; one that spans chunks is accumulated in a reused per-event buffer capped at
//!   [`DEFAULT_MAX_EVENT_BYTES`] (16 MiB, sized for the Responses API's `response.completed`,
//!   which repeats the whole output). An event over the cap is dropped — its usage is lost,
//!   [`UsageScanner::dropped_events`] counts it — and scanning carries on with the next one.
//!   Each complete event is then read by serde into small borrowed structs that name only the
//!   fields we need (`wire.rs`); everything else is skipped without being built. Events whose
//!   `event:` name says they carry nothing for us (`ping`, `response.output_item.done`, ...) are
//!   not parsed at all.
//! * **JSON** (non-streamed): `json.rs` runs a tiny tokenizer (in string / after backslash /
//!   depth / object-or-array per level) over the body without buffering it, copies only the value
//!   of the top-level `usage` key (at most 64 KiB) and parses that. An embeddings body of many
//!   megabytes costs a scan, not a copy.
//!
//! Streamed usage is merged field by field by maximum ([`Usage::merge_max`]): Anthropic's
//! `message_start` says `output_tokens: 1` and each `message_delta` gives the cumulative count.
//!
//! Memory per scanner is bounded: the SSE event buffer (≤ 16 MiB, released after an event that
//! grew it past 64 KiB), the JSON capture (≤ 64 KiB), the strip hold-back (≤ 64 KiB) and at
//! most 1 KiB of error text. The stream itself is never stored, except under cost reporting
//! ([`UsageScanner::with_report`], a project's `report_cost`): then an incomplete event is held
//! back until it completes, and a JSON body until its end, each up to 16 MiB.

mod json;
mod report;
mod sse;
mod wire;

#[cfg(test)]
mod tests;

use bytes::Bytes;

use json::JsonScanner;
pub use report::{annotate_event, insert_members, Charge, Reported};
use sse::{Dispatch, SseParser};
use wire::{AnthropicEvent, ResponsesEvent, WireError, WireUsage};

/// Keys whose string values are output text in an OpenAI chat or legacy completions stream
/// chunk (`choices[].delta.content`, `.refusal`, `.reasoning_content`,
/// `.tool_calls[].function.arguments`; `choices[].text`).
const CHUNK_TEXT_KEYS: &[&[u8]] = &[
    b"content",
    b"refusal",
    b"reasoning_content",
    b"arguments",
    b"text",
];

/// Cap on one SSE event's data. Sized for the Responses API's `response.completed`, which
/// repeats the full output; a bigger event is dropped (see the module doc).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// In strip mode an incomplete event is held back only while it is this small: the usage-only
/// chunk is a few hundred bytes, so a bigger event cannot be it and is forwarded as it comes.
const STRIP_HOLD_MAX: usize = 64 * 1024;

/// Appends `bytes` unless that would take `buf` past `cap` bytes (then returns false and
/// leaves it alone). Growth is clamped to `cap`, so capacity never overshoots the cap the way
/// plain doubling would.
fn extend_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) -> bool {
    let need = buf.len().saturating_add(bytes.len());
    if need > cap {
        return false;
    }
    if need > buf.capacity() {
        let target = buf.capacity().saturating_mul(2).clamp(need, cap);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
    true
}

/// Which API's response body is being scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// `POST /v1/chat/completions`.
    OpenAiChat,
    /// `POST /v1/completions` (legacy).
    OpenAiCompletions,
    /// `POST /v1/embeddings`: JSON only, reports no completion tokens.
    OpenAiEmbeddings,
    /// `POST /v1/responses`.
    OpenAiResponses,
    /// Anthropic `POST /v1/messages`.
    AnthropicMessages,
}

impl WireFormat {
    /// True when `cache_read_tokens` is part of `prompt_tokens` (OpenAI), false when cache
    /// tokens come on top of it (Anthropic). Pricing needs this; see [`Usage`].
    pub fn cache_is_subset_of_prompt(self) -> bool {
        !matches!(self, WireFormat::AnthropicMessages)
    }

    /// Keys whose string values are output text in a non-streamed body of this format.
    fn json_text_keys(self) -> &'static [&'static [u8]] {
        match self {
            WireFormat::OpenAiChat => &[b"content", b"refusal", b"arguments", b"reasoning_content"],
            WireFormat::OpenAiCompletions => &[b"text"],
            WireFormat::OpenAiEmbeddings => &[],
            WireFormat::OpenAiResponses => &[b"text", b"arguments"],
            WireFormat::AnthropicMessages => &[b"text", b"thinking"],
        }
    }
}

/// Token usage as the provider reported it. `None` means "not reported", never a silent 0.
///
/// The providers count differently, and pricing must follow them:
///
/// | field | OpenAI (chat, completions, embeddings, Responses) | Anthropic Messages |
/// |---|---|---|
/// | `prompt_tokens` | `prompt_tokens` / `input_tokens`: **all** input tokens, cached ones included | `input_tokens`: only the **uncached** input tokens |
/// | `completion_tokens` | `completion_tokens` / `output_tokens`, reasoning tokens included | `output_tokens`, thinking included |
/// | `cache_read_tokens` | `prompt_tokens_details.cached_tokens` / `input_tokens_details.cached_tokens`: a **subset** of `prompt_tokens` | `cache_read_input_tokens`: **in addition to** `input_tokens` |
/// | `cache_write_tokens` | never reported (`None`) | `cache_creation_input_tokens`: **in addition to** `input_tokens` |
///
/// So OpenAI's full-price input is `prompt_tokens - cache_read_tokens`, while Anthropic's total
/// input is `prompt_tokens + cache_read_tokens + cache_write_tokens`.
/// [`WireFormat::cache_is_subset_of_prompt`] tells which rule applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// OpenAI `prompt_tokens` / `input_tokens` (cached included); Anthropic `input_tokens`
    /// (uncached part only, as Anthropic reports it).
    pub prompt_tokens: Option<u64>,
    /// Output tokens, reasoning/thinking included, as the providers bill them.
    pub completion_tokens: Option<u64>,
    /// OpenAI `cached_tokens` (a subset of `prompt_tokens`); Anthropic
    /// `cache_read_input_tokens` (separate from `input_tokens`).
    pub cache_read_tokens: Option<u64>,
    /// Anthropic `cache_creation_input_tokens` (separate from `input_tokens`).
    pub cache_write_tokens: Option<u64>,
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Usage {
    /// Field-wise maximum; a field reported by either side stays reported. Streams report
    /// cumulative counts (Anthropic `message_delta`) or repeat them, so the maximum is the total.
    pub fn merge_max(&mut self, other: &Usage) {
        self.prompt_tokens = max_opt(self.prompt_tokens, other.prompt_tokens);
        self.completion_tokens = max_opt(self.completion_tokens, other.completion_tokens);
        self.cache_read_tokens = max_opt(self.cache_read_tokens, other.cache_read_tokens);
        self.cache_write_tokens = max_opt(self.cache_write_tokens, other.cache_write_tokens);
    }

    /// No field was reported.
    pub fn is_empty(&self) -> bool {
        self.prompt_tokens.is_none()
            && self.completion_tokens.is_none()
            && self.cache_read_tokens.is_none()
            && self.cache_write_tokens.is_none()
    }

    /// Every input token, cached or not, in `format`'s semantics: OpenAI's cached tokens are
    /// already inside `prompt_tokens`, Anthropic's cache reads and writes come on top.
    /// `None` when the provider reported no input count. The one place this is derived: the
    /// rate limit, the token metric and pricing all use it.
    pub fn input_tokens(&self, format: WireFormat) -> Option<u64> {
        let prompt = self.prompt_tokens?;
        Some(if format.cache_is_subset_of_prompt() {
            prompt
        } else {
            prompt
                .saturating_add(self.cache_read_tokens.unwrap_or(0))
                .saturating_add(self.cache_write_tokens.unwrap_or(0))
        })
    }

    /// The input tokens billed at the full input price (cache reads and writes have their own).
    pub fn uncached_input_tokens(&self, format: WireFormat) -> u64 {
        let prompt = self.prompt_tokens.unwrap_or(0);
        if format.cache_is_subset_of_prompt() {
            prompt.saturating_sub(self.cache_read_tokens.unwrap_or(0))
        } else {
            prompt
        }
    }

    /// Input plus output tokens: what a `tpm` limit counts.
    pub fn total_tokens(&self, format: WireFormat) -> u64 {
        self.input_tokens(format)
            .unwrap_or(0)
            .saturating_add(self.completion_tokens.unwrap_or(0))
    }
}

/// Where a finished request's token counts came from (the record's `usage_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The provider reported them.
    Reported,
    /// Tollgate estimated (some of) them from the bytes delivered.
    Estimated,
    /// Nothing reached a provider's response body (a block, an upstream failure).
    None,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Reported => "reported",
            Source::Estimated => "estimated",
            Source::None => "none",
        }
    }
}

/// The usage a finished request is charged for: what the provider reported, completed by an
/// estimate from the delivered bytes where it reported nothing (or the stream broke before its
/// final count). `request_bytes` bounds the prompt when no input count was reported.
pub fn final_usage(scanner: Option<&UsageScanner>, request_bytes: usize) -> (Usage, Source) {
    let Some(scanner) = scanner else {
        return (Usage::default(), Source::None);
    };
    charged_usage(&scanner.ex, request_bytes, scanner.ex.complete)
}

/// [`final_usage`] of what the scanner found so far, with `complete` saying whether the body
/// ended the way a finished response ends.
fn charged_usage(ex: &Extract, request_bytes: usize, complete: bool) -> (Usage, Source) {
    if !ex.usage.is_empty() {
        let mut u = ex.usage;
        let estimate = ex.estimated_completion_tokens();
        if u.completion_tokens.is_none() {
            if ex.format == WireFormat::OpenAiEmbeddings {
                // Embeddings produce no output tokens; the provider reports only the input.
                u.completion_tokens = Some(0);
                return (u, Source::Reported);
            }
            u.completion_tokens = Some(estimate);
            return (u, Source::Estimated);
        }
        if !complete {
            // Cut off before the final count (Anthropic's message_start says output_tokens: 1):
            // charge what was visibly delivered if that is more.
            let reported = u.completion_tokens.unwrap_or(0);
            if estimate > reported {
                u.completion_tokens = Some(estimate);
                return (u, Source::Estimated);
            }
        }
        return (u, Source::Reported);
    }
    let u = Usage {
        // An upper bound: no tokenizer turns fewer than 4 bytes of JSON into more than 1 token
        // often enough to matter, and the body includes every prompt byte.
        prompt_tokens: Some(request_bytes.div_ceil(4) as u64),
        completion_tokens: Some(ex.estimated_completion_tokens()),
        ..Usage::default()
    };
    (u, Source::Estimated)
}

/// What the caller does with the chunk it just fed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Forward the chunk unchanged.
    Pass,
    /// Forward these bytes instead (possibly empty: everything was held back or removed).
    Replace(Bytes),
}

/// What the scanner found so far; shared by the SSE and JSON paths.
/// The start of the last OpenAI chunk read from its beginning, up to its first text string, and
/// the tokenizer there (see `Extract::openai_chunk`).
struct ChunkPrefix {
    bytes: Vec<u8>,
    /// Output text the prefix itself counted.
    text: u64,
    state: Box<JsonScanner>,
}

struct Extract {
    /// Reads OpenAI stream chunks; kept from one event to the next for its buffer.
    chunk: Option<Box<JsonScanner>>,
    prefix: Option<ChunkPrefix>,
    format: WireFormat,
    usage: Usage,
    reasoning_tokens: Option<u64>,
    text_bytes: u64,
    events: u64,
    error: Option<String>,
    complete: bool,
    dropped: u64,
}

/// What one SSE event was, for the hold-back modes.
#[derive(Clone, Copy, Default)]
struct Kind {
    /// An OpenAI usage-only chunk (the one strip mode removes).
    usage_only: bool,
    /// The event whose usage object gets the cost members: an OpenAI chunk with a `usage`
    /// object, a Responses event with `response.usage`, an Anthropic `message_delta` with
    /// `usage`.
    usage: bool,
}

impl Extract {
    /// See [`UsageScanner::estimated_completion_tokens`].
    fn estimated_completion_tokens(&self) -> u64 {
        self.text_bytes.div_ceil(4).max(self.events)
    }

    fn merge(&mut self, u: &WireUsage) {
        let (usage, reasoning) = u.to_usage(self.format);
        self.usage.merge_max(&usage);
        self.reasoning_tokens = max_opt(self.reasoning_tokens, reasoning);
    }

    fn set_error(&mut self, e: impl FnOnce() -> String) {
        // The first error is the cause; later ones tend to be consequences.
        if self.error.is_none() {
            self.error = Some(e());
        }
    }

    fn delta(&mut self, bytes: u64) {
        if bytes > 0 {
            self.text_bytes = self.text_bytes.saturating_add(bytes);
            self.events += 1;
        }
    }

    /// Merge a `usage` value; true when it was an object (not `null` or garbage).
    fn json_usage(&mut self, value: &[u8]) -> bool {
        if value.trim_ascii() == b"null" {
            return false;
        }
        match WireUsage::read(value) {
            Ok(Some(u)) => {
                self.merge(&u);
                true
            }
            _ => false,
        }
    }

    fn json_error(&mut self, value: &[u8]) {
        if let Ok(Some(e)) = serde_json::from_slice::<Option<WireError>>(value) {
            self.set_error(|| e.describe());
        }
    }

    /// Reads one SSE event and says what it was.
    fn on_sse(&mut self, d: &Dispatch<'_>) -> Kind {
        match *d {
            Dispatch::Empty => Kind::default(),
            Dispatch::Overflow => {
                self.dropped += 1;
                Kind::default()
            }
            Dispatch::Event { name, data } => match self.format {
                WireFormat::OpenAiChat
                | WireFormat::OpenAiCompletions
                | WireFormat::OpenAiEmbeddings => self.openai_chunk(data),
                WireFormat::OpenAiResponses => Kind {
                    usage_only: false,
                    usage: self.responses_event(name, data),
                },
                WireFormat::AnthropicMessages => Kind {
                    usage_only: false,
                    usage: self.anthropic_event(name, data),
                },
            },
        }
    }

    fn openai_chunk(&mut self, data: &[u8]) -> Kind {
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.complete = true;
            return Kind::default();
        }
        // The chunk is read by the same tokenizer as a whole JSON body: a serde parse of every
        // chunk cost about three times as much, and only `usage` and `error` need one.
        let mut js = self
            .chunk
            .take()
            .unwrap_or_else(|| Box::new(JsonScanner::new(CHUNK_TEXT_KEYS)));
        let (text_before, complete_before) = (self.text_bytes, self.complete);
        // The chunks of one stream repeat the same id, model and fingerprint in front of each
        // delta, byte for byte: a chunk that starts with the bytes the previous one had before
        // its first text string is resumed from the tokenizer state saved there, so only the
        // delta and the tail are read. Exact: the tokenizer is a pure function of the bytes.
        let resumed = match &self.prefix {
            Some(p) if data.len() > p.bytes.len() && data.starts_with(&p.bytes) => {
                js.resume_from(&p.state);
                self.text_bytes += p.text;
                Some(p.bytes.len())
            }
            _ => None,
        };
        match resumed {
            Some(n) => js.feed(&data[n..], self),
            None => {
                js.reset();
                js.want_snapshot = true;
                js.feed(data, self);
            }
        }
        js.finish(self);
        if let Some(snap) = js.snapshot.take() {
            let mut bytes = self.prefix.take().map(|p| p.bytes).unwrap_or_default();
            bytes.clear();
            bytes.extend_from_slice(&data[..snap.at]);
            self.prefix = Some(ChunkPrefix {
                bytes,
                text: snap.text_bytes - text_before,
                state: snap.state,
            });
        }
        let text = self.text_bytes - text_before;
        self.text_bytes = text_before;
        // A chunk object ending is not the stream ending.
        self.complete = complete_before;
        self.delta(text);
        // `"choices":[]` plus usage: the chunk include_usage adds, and nothing else.
        let kind = Kind {
            usage_only: js.usage_found && js.choices_empty == Some(true),
            usage: js.usage_found,
        };
        self.chunk = Some(js);
        kind
    }

    /// True when the event carries `response.usage` (an object).
    fn responses_event(&mut self, name: Option<&[u8]>, data: &[u8]) -> bool {
        if let Some(name) = name {
            if !responses_event_matters(name) {
                return false;
            }
        }
        let Some(ev) = ResponsesEvent::read(data) else {
            return false;
        };
        let kind = ev.kind();
        if is_text_delta(kind.as_bytes()) {
            self.delta(ev.delta.0);
        }
        match kind {
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.complete = true
            }
            "error" => self.set_error(|| ev.top_level_error()),
            _ => {}
        }
        if let Some(e) = &ev.error.0 {
            self.set_error(|| e.describe());
        }
        let mut usage = false;
        if let Some(r) = &ev.response.0 {
            if let Some(u) = &r.usage.0 {
                self.merge(u);
                usage = true;
            }
            if let Some(e) = &r.error.0 {
                self.set_error(|| e.describe());
            }
        }
        usage
    }

    /// True when the event is a `message_delta` with a `usage` object.
    fn anthropic_event(&mut self, name: Option<&[u8]>, data: &[u8]) -> bool {
        match name {
            Some(b"ping" | b"content_block_start" | b"content_block_stop") => return false,
            Some(b"message_stop") => {
                self.complete = true;
                return false;
            }
            _ => {}
        }
        let Some(ev) = AnthropicEvent::read(data) else {
            return false;
        };
        match ev.kind() {
            "content_block_delta" => {
                if let Some(d) = &ev.delta.0 {
                    self.delta(wire::Text::text_bytes(d));
                }
            }
            "message_stop" => self.complete = true,
            _ => {}
        }
        if let Some(m) = &ev.message.0 {
            if let Some(u) = &m.usage.0 {
                self.merge(u);
            }
        }
        let mut usage = false;
        if let Some(u) = &ev.usage.0 {
            self.merge(u);
            usage = ev.kind() == "message_delta";
        }
        if let Some(e) = &ev.error.0 {
            self.set_error(|| e.describe());
        }
        usage
    }
}

/// Output deltas of the Responses API: text, refusals, reasoning text and summaries, tool
/// arguments and code. Audio deltas are base64 and billed as audio tokens, so they are left out.
fn is_text_delta(kind: &[u8]) -> bool {
    kind.ends_with(b".delta") && memchr::memmem::find(kind, b"audio").is_none()
}

/// Responses events worth parsing: the output deltas, the terminal events (they carry usage)
/// and errors. The rest (`response.created`, `*.done`, ...) can be big and carry nothing new.
fn responses_event_matters(name: &[u8]) -> bool {
    is_text_delta(name)
        || matches!(
            name,
            b"response.completed" | b"response.incomplete" | b"response.failed" | b"error"
        )
}

/// Bytes to hand the client for one fed chunk, built without copying while they are one
/// contiguous range of it.
enum Out {
    Range(usize, usize),
    Owned(Vec<u8>),
}

impl Out {
    fn push_range(&mut self, chunk: &[u8], a: usize, b: usize) {
        if a >= b {
            return;
        }
        match self {
            Out::Range(s, e) if s == e => {
                *s = a;
                *e = b;
            }
            Out::Range(_, e) if *e == a => *e = b,
            Out::Range(s, e) => {
                let mut v = Vec::with_capacity(*e - *s + b - a);
                v.extend_from_slice(&chunk[*s..*e]);
                v.extend_from_slice(&chunk[a..b]);
                *self = Out::Owned(v);
            }
            Out::Owned(v) => v.extend_from_slice(&chunk[a..b]),
        }
    }

    fn push_bytes(&mut self, chunk: &[u8], bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Out::Range(s, e) = *self {
            *self = Out::Owned(chunk[s..e].to_vec());
        }
        if let Out::Owned(v) = self {
            v.extend_from_slice(bytes);
        }
    }
}

/// What `feed` decided, before it is turned into a [`Feed`].
enum Emit {
    Pass,
    Range(usize, usize),
    Owned(Vec<u8>),
}

/// Hold-back state of a stream whose events may be removed (the usage-only chunk) or edited
/// (cost reporting): an incomplete event is kept until it completes, so it is handled whole.
struct Hold {
    /// Raw bytes of the current, still incomplete event.
    held: Vec<u8>,
    /// The current event outgrew the hold-back and is being forwarded as it arrives.
    passthrough: bool,
    /// The last complete event was removed: a `\n` completing its `\r\n` goes with it.
    last_dropped: bool,
    /// An incomplete event is held back only while it is at most this big.
    cap: usize,
    /// Remove the usage-only chunk.
    strip: bool,
}

/// A JSON body in cost reporting: held whole, because its usage (and so its cost) is known only
/// once it has been read, and the usage object can come before the end.
enum JsonHold {
    /// A stream: events are edited as they pass, nothing is held here.
    Off,
    Holding(Vec<u8>),
    /// Outgrew [`DEFAULT_MAX_EVENT_BYTES`] (or was delivered): passed on unedited.
    Passed,
}

/// Cost reporting (see [`UsageScanner::with_report`]).
struct Reporting {
    charge: Charge,
    request_bytes: usize,
    /// The call's duration so far, as the caller last said (see `set_elapsed_ms`).
    elapsed_ms: f64,
    /// What the client was last told.
    last: Option<Reported>,
    json: JsonHold,
}

impl Reporting {
    /// The report as of now. The event (or body) being edited carries the provider's final
    /// count, so the usage is charged as a finished response's would be.
    fn report(&self, ex: &Extract) -> Reported {
        let (usage, source) = charged_usage(ex, self.request_bytes, true);
        Reported {
            usage,
            source,
            cost: self.charge.cost(&usage, ex.format),
            duration_ms: self.elapsed_ms,
        }
    }

    /// The raw event `held` + `tail` with the members in its usage object; `None` (and nothing
    /// reported) when it cannot be edited.
    fn edit_event(&mut self, ex: &Extract, held: &[u8], tail: &[u8]) -> Option<Vec<u8>> {
        let joined;
        let raw = if held.is_empty() {
            tail
        } else {
            let mut v = Vec::with_capacity(held.len() + tail.len());
            v.extend_from_slice(held);
            v.extend_from_slice(tail);
            joined = v;
            &joined[..]
        };
        let path = match ex.format {
            WireFormat::OpenAiResponses => report::RESPONSE_USAGE,
            _ => report::TOP_USAGE,
        };
        let r = self.report(ex);
        let edited = annotate_event(raw, path, &r.members())?;
        self.last = Some(r);
        Some(edited)
    }

    /// A chunk of a JSON body: held (nothing goes out yet) until the cap, then passed on.
    fn hold_json(&mut self, chunk: &[u8]) -> Emit {
        let JsonHold::Holding(buf) = &mut self.json else {
            return Emit::Pass;
        };
        if extend_capped(buf, chunk, DEFAULT_MAX_EVENT_BYTES) {
            return Emit::Owned(Vec::new());
        }
        let mut v = std::mem::take(buf);
        v.extend_from_slice(chunk);
        self.json = JsonHold::Passed;
        Emit::Owned(v)
    }
}

enum Mode {
    Sse(SseParser),
    Json(JsonScanner),
}

/// Incremental usage extraction for one response body. See the module doc.
pub struct UsageScanner {
    mode: Mode,
    hold: Option<Hold>,
    report: Option<Reporting>,
    ex: Extract,
}

impl UsageScanner {
    /// `sse`: the response content-type is `text/event-stream`.
    ///
    /// `strip_usage_chunk` only applies to OpenAI chat and legacy completions streams (it is
    /// ignored otherwise): the gateway injected `stream_options.include_usage` that the client
    /// did not ask for, so the usage-only chunk (a chunk object whose `choices` is an empty array
    /// and which carries `usage`) is removed from what the client receives. The other chunks
    /// still carry the `"usage":null` that include_usage adds to them; clients ignore it.
    pub fn new(format: WireFormat, sse: bool, strip_usage_chunk: bool) -> Self {
        let mode = if sse {
            Mode::Sse(SseParser::new(DEFAULT_MAX_EVENT_BYTES))
        } else {
            Mode::Json(JsonScanner::new(format.json_text_keys()))
        };
        let strippable = matches!(
            format,
            WireFormat::OpenAiChat | WireFormat::OpenAiCompletions
        );
        UsageScanner {
            mode,
            hold: (sse && strip_usage_chunk && strippable).then(|| Hold {
                held: Vec::new(),
                passthrough: false,
                last_dropped: false,
                cap: STRIP_HOLD_MAX,
                strip: true,
            }),
            report: None,
            ex: Extract {
                chunk: None,
                prefix: None,
                format,
                usage: Usage::default(),
                reasoning_tokens: None,
                text_bytes: 0,
                events: 0,
                error: None,
                complete: false,
                dropped: 0,
            },
        }
    }

    /// Cost reporting (a project's `report_cost`, SPEC "Console and reports"): the response's
    /// usage object gets `"cost"` (what `charge` makes of the usage, in USD) and
    /// `"duration_ms"` (the last [`set_elapsed_ms`](Self::set_elapsed_ms)), inserted after its
    /// last member; every other byte is left as it came.
    ///
    /// * A JSON body (chat, completions, Responses, Anthropic) is held whole and handed over by
    ///   [`finish`](Self::finish), edited in its top-level `usage`; one over
    ///   [`DEFAULT_MAX_EVENT_BYTES`] is passed on unedited.
    /// * A stream's usage event is edited as it passes: the OpenAI chunk with a `usage` object,
    ///   the Responses event with `response.usage` (`response.completed`), the Anthropic
    ///   `message_delta`. Incomplete events are held back until they complete (up to the same
    ///   cap), as in strip mode.
    ///
    /// Ignored for embeddings, and for a stream whose usage chunk is being stripped (the client
    /// did not ask for usage). `request_bytes` is what [`final_usage`] is given.
    pub fn with_report(mut self, charge: Charge, request_bytes: usize) -> Self {
        let sse = matches!(self.mode, Mode::Sse(_));
        let stripping = self.hold.is_some();
        if self.ex.format == WireFormat::OpenAiEmbeddings || stripping {
            return self;
        }
        if sse {
            self.hold = Some(Hold {
                held: Vec::new(),
                passthrough: false,
                last_dropped: false,
                cap: DEFAULT_MAX_EVENT_BYTES,
                strip: false,
            });
        }
        self.report = Some(Reporting {
            charge,
            request_bytes,
            elapsed_ms: 0.0,
            last: None,
            json: if sse {
                JsonHold::Off
            } else {
                JsonHold::Holding(Vec::new())
            },
        });
        self
    }

    /// Cost reporting is on: the bytes handed out may differ from the provider's (a
    /// `Content-Length` no longer holds).
    pub fn edits_body(&self) -> bool {
        self.report.is_some()
    }

    /// The call's duration so far, for the next edit (cost reporting only).
    pub fn set_elapsed_ms(&mut self, ms: f64) {
        if let Some(r) = &mut self.report {
            r.elapsed_ms = ms;
        }
    }

    /// What the client was last told (cost reporting): the usage, cost and duration written
    /// into its response. `None` when nothing was edited (yet).
    pub fn cost_report(&self) -> Option<Reported> {
        self.report.as_ref().and_then(|r| r.last)
    }

    #[cfg(test)]
    /// Changes the per-event cap of an SSE stream ([`DEFAULT_MAX_EVENT_BYTES`] by default).
    pub fn with_max_event_bytes(mut self, max: usize) -> Self {
        if let Mode::Sse(p) = &mut self.mode {
            p.set_max_event(max);
        }
        self
    }

    #[cfg(test)]
    /// Feeds the next chunk of the body. Without stripping or cost reporting this always
    /// returns [`Feed::Pass`] and never copies. With stripping, an incomplete trailing event is
    /// held back (a client cannot use half an event anyway) and `Replace` carries the complete
    /// events of (held-back + chunk) minus the usage-only one; `Pass` when nothing changed and
    /// nothing is held back, which is the common case. Cost reporting holds back the same way
    /// and edits the usage event instead (a JSON body: everything is held until `finish`).
    pub fn feed(&mut self, chunk: &[u8]) -> Feed {
        match self.feed_inner(chunk) {
            Emit::Pass => Feed::Pass,
            Emit::Range(a, b) => Feed::Replace(Bytes::copy_from_slice(&chunk[a..b])),
            Emit::Owned(v) => Feed::Replace(Bytes::from(v)),
        }
    }

    /// [`feed`](Self::feed) for a chunk already in a `Bytes`: when the output is one contiguous
    /// part of the chunk (the usage chunk was first or last in it) it is a zero-copy slice.
    pub fn feed_bytes(&mut self, chunk: &Bytes) -> Feed {
        match self.feed_inner(chunk) {
            Emit::Pass => Feed::Pass,
            Emit::Range(a, b) => Feed::Replace(chunk.slice(a..b)),
            Emit::Owned(v) => Feed::Replace(Bytes::from(v)),
        }
    }

    fn feed_inner(&mut self, chunk: &[u8]) -> Emit {
        let parser = match &mut self.mode {
            Mode::Json(j) => {
                j.feed_document(chunk, &mut self.ex);
                return match &mut self.report {
                    None => Emit::Pass,
                    Some(r) => r.hold_json(chunk),
                };
            }
            Mode::Sse(p) => p,
        };
        let ex = &mut self.ex;
        let report = &mut self.report;
        let Some(hold) = &mut self.hold else {
            parser.feed(chunk, |d, _| {
                ex.on_sse(&d);
            });
            return Emit::Pass;
        };
        let n = chunk.len();
        let mut out = Out::Range(0, 0);
        // Start of the current event's bytes in this chunk.
        let mut seg = 0;
        if parser.pending_cr()
            && hold.held.is_empty()
            && !hold.passthrough
            && chunk.first() == Some(&b'\n')
        {
            // The `\n` of a `\r\n` that ended the previous event in the previous chunk: it
            // shares that event's fate, not the next one's.
            if !hold.last_dropped {
                out.push_range(chunk, 0, 1);
            }
            seg = 1;
        }
        parser.feed(chunk, |d, end| {
            let kind = ex.on_sse(&d);
            let whole = !hold.passthrough;
            let drop = hold.strip && kind.usage_only && whole;
            if !drop {
                let edited = match report.as_mut() {
                    Some(r) if kind.usage && whole => {
                        r.edit_event(ex, &hold.held, &chunk[seg..end])
                    }
                    _ => None,
                };
                match edited {
                    Some(v) => out.push_bytes(chunk, &v),
                    None => {
                        out.push_bytes(chunk, &hold.held);
                        out.push_range(chunk, seg, end);
                    }
                }
            }
            hold.last_dropped = drop;
            hold.held.clear();
            hold.passthrough = false;
            seg = end;
        });
        if hold.passthrough {
            out.push_range(chunk, seg, n);
        } else if seg < n && !extend_capped(&mut hold.held, &chunk[seg..], hold.cap) {
            out.push_bytes(chunk, &hold.held);
            hold.held = Vec::new();
            out.push_range(chunk, seg, n);
            hold.passthrough = true;
        }
        match out {
            Out::Range(0, e) if e == n && hold.held.is_empty() => Emit::Pass,
            Out::Range(a, b) => Emit::Range(a, b),
            Out::Owned(v) => Emit::Owned(v),
        }
    }

    /// End of body. Returns held-back bytes that must still be delivered (strip mode and cost
    /// reporting only), e.g. a final event without its trailing blank line, or a whole JSON
    /// body with its cost. An unterminated last event is still read for usage, though the SSE
    /// spec would not dispatch it. Idempotent.
    pub fn finish(&mut self) -> Option<Bytes> {
        let ex = &mut self.ex;
        match &mut self.mode {
            Mode::Json(j) => {
                j.finish(ex);
                let r = self.report.as_mut()?;
                let JsonHold::Holding(buf) = &mut r.json else {
                    return None;
                };
                let body = std::mem::take(buf);
                r.json = JsonHold::Passed;
                if body.is_empty() {
                    return None;
                }
                let rep = r.report(ex);
                match insert_members(&body, report::TOP_USAGE, &rep.members()) {
                    Some(v) => {
                        r.last = Some(rep);
                        Some(Bytes::from(v))
                    }
                    None => Some(Bytes::from(body)),
                }
            }
            Mode::Sse(p) => {
                let mut kind = Kind::default();
                p.finish(|d, _| {
                    let k = ex.on_sse(&d);
                    kind.usage_only |= k.usage_only;
                    kind.usage |= k.usage;
                });
                let hold = self.hold.as_mut()?;
                let held = std::mem::take(&mut hold.held);
                let whole = !hold.passthrough;
                let drop = hold.strip && kind.usage_only && whole;
                hold.passthrough = false;
                if held.is_empty() || drop {
                    return None;
                }
                let edited = match self.report.as_mut() {
                    Some(r) if kind.usage && whole => r.edit_event(ex, &[], &held),
                    _ => None,
                };
                Some(Bytes::from(edited.unwrap_or(held)))
            }
        }
    }

    #[cfg(test)]
    /// Reported usage so far, merged by maximum.
    pub fn usage(&self) -> Usage {
        self.ex.usage
    }

    #[cfg(test)]
    /// Any usage field was reported.
    pub fn reported(&self) -> bool {
        !self.ex.usage.is_empty()
    }

    #[cfg(test)]
    /// Reasoning tokens when the provider reports them (OpenAI `reasoning_tokens`). Already
    /// included in `completion_tokens`: for logging only, never bill them on top.
    pub fn reasoning_tokens(&self) -> Option<u64> {
        self.ex.reasoning_tokens
    }

    #[cfg(test)]
    /// Output text bytes actually seen: streamed delta text (content, refusals, tool-call
    /// arguments, reasoning text), or, for a JSON body, the string values of the format's
    /// content keys (escapes counted roughly). Embeddings have none.
    pub fn output_text_bytes(&self) -> u64 {
        self.ex.text_bytes
    }

    #[cfg(test)]
    /// Stream events that carried output text. 0 for a JSON body.
    pub fn output_events(&self) -> u64 {
        self.ex.events
    }

    #[cfg(test)]
    /// An estimate of completion tokens for when none was reported (or the stream was cut):
    /// `max(ceil(output_text_bytes / 4), output_events)`.
    ///
    /// About 4 bytes per token is the usual figure for English text with OpenAI's and
    /// Anthropic's tokenizers; it undercounts text that tokenizes densely (code, CJK at ~3 bytes
    /// per character and often a token each). OpenAI streams about one token per chunk, so the
    /// number of content-bearing events is a floor that catches that case. Hidden reasoning
    /// tokens (OpenAI o-series) are never streamed, so this can only undercount them.
    pub fn estimated_completion_tokens(&self) -> u64 {
        self.ex.estimated_completion_tokens()
    }

    #[cfg(test)]
    /// The first error the body reported: an Anthropic `event: error`, an OpenAI
    /// `{"error":...}` chunk, a Responses `error` / `response.failed`, or a top-level `error`
    /// object in a JSON body. For logging; at most 1 KiB.
    pub fn stream_error(&self) -> Option<&str> {
        self.ex.error.as_deref()
    }

    #[cfg(test)]
    /// The body ended the way the provider ends a finished response: `data: [DONE]` (OpenAI),
    /// `message_stop` (Anthropic), a terminal `response.*` event (Responses), or the closing
    /// brace of a JSON body. False for a stream cut short, where reported usage (Anthropic's
    /// `message_start` count) can lag behind what was delivered.
    pub fn stream_complete(&self) -> bool {
        self.ex.complete
    }

    #[cfg(test)]
    /// SSE events dropped for exceeding the per-event cap.
    pub fn dropped_events(&self) -> u64 {
        self.ex.dropped
    }

    #[cfg(test)]
    /// Bytes of buffer capacity this scanner holds right now (for memory accounting).
    pub fn buffered_bytes(&self) -> usize {
        let mode = match &self.mode {
            Mode::Sse(p) => p.buffered_bytes(),
            Mode::Json(j) => j.buffered_bytes(),
        };
        let json = match self.report.as_ref().map(|r| &r.json) {
            Some(JsonHold::Holding(b)) => b.capacity(),
            _ => 0,
        };
        mode + self.hold.as_ref().map_or(0, |s| s.held.capacity()) + json
    }
}
