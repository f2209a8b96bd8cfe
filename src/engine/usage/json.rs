//! Incremental scan of a non-streamed JSON body.
//!
//! The body is never buffered: a tokenizer that knows only "inside a string", "after a
//! backslash", the nesting depth and, per level, whether it is an object, is enough to tell an
//! object key from a value and a top-level key from a nested one. Only the value of the top-level
//! `usage` (and `error`) key is copied, up to [`CAPTURE_MAX`], and handed to serde once it ends.
//! String values under a few text-bearing keys (`content`, `text`, ...) are measured on the fly
//! for the output estimate.
//!
//! Limits, all harmless for real provider bodies: a key written with escapes (`"\u0075sage"`)
//! is not recognised; object/array tracking is exact for the first 128 levels of nesting, deeper
//! levels are treated as arrays (no key is recognised there); the text length counts an escape
//! such as `\n` as one byte and `\u00e9` as five, so it is an estimate.

use memchr::{memchr, memchr2};

use super::{extend_capped, Extract};
use crate::engine::cursor::{Bail, Cursor, Str};

/// Bytes of the `usage` (or `error`) value kept: real ones are a few hundred bytes.
pub(crate) const CAPTURE_MAX: usize = 64 * 1024;
/// Keys are compared only if this short; longer ones match nothing we look for.
const KEY_MAX: usize = 24;
/// Depths whose container kind is tracked.
const TRACKED_DEPTH: usize = 128;

/// Bytes that change the tokenizer's state outside a string. Everything else (numbers,
/// literals, whitespace) is skipped in a tight loop, which is most of an embeddings body.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t[b',' as usize] = true;
    t[b':' as usize] = true;
    t
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Other,
    Usage,
    Error,
    Text,
    Choices,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Key,
    Text,
    Other,
}

#[derive(Clone)]
pub(crate) struct JsonScanner {
    depth: usize,
    /// Bit `d - 1` set: the container at depth `d` is an object.
    objects: u128,
    in_string: bool,
    escape: bool,
    role: Role,
    /// The next string at this point is an object key.
    expect_key: bool,
    key: [u8; KEY_MAX],
    /// May exceed `KEY_MAX` (then it matches nothing).
    key_len: usize,
    /// The key just read, waiting for its colon.
    last_key: Key,
    /// The value about to start belongs to a text key.
    text_value_next: bool,
    capture: Option<Key>,
    buf: Vec<u8>,
    buf_overflow: bool,
    text_keys: &'static [&'static [u8]],
    seen_object: bool,
    /// A top-level `usage` object was found and parsed (not `null`).
    pub(crate) usage_found: bool,
    /// The top-level `choices` key's value: `Some(true)` for `[]`, `Some(false)` for any other
    /// value, `None` while not seen.
    pub(crate) choices_empty: Option<bool>,
    /// The next value belongs to the top-level `choices` key.
    choices_next: bool,
    /// Just inside the top-level `choices` array: the next byte that is not whitespace tells
    /// whether it is empty.
    choices_open: bool,
    /// Take a [`Snapshot`] where the first output-text string starts, if nothing was captured
    /// before it (see `Extract::openai_chunk`).
    pub(crate) want_snapshot: bool,
    /// A capture (usage or error) has started in this document.
    captured: bool,
    pub(crate) snapshot: Option<Snapshot>,
}

/// The tokenizer's state just inside the first output-text string of a document, and where
/// that is: a document that starts with the same bytes reaches the same state there, so it can
/// be resumed from it instead of read from the start.
#[derive(Clone)]
pub(crate) struct Snapshot {
    /// Bytes of the document up to and including the string's opening quote.
    pub(crate) at: usize,
    /// `Extract::text_bytes` at that point, for the caller to tell what the prefix counted.
    pub(crate) text_bytes: u64,
    pub(crate) state: Box<JsonScanner>,
}

impl JsonScanner {
    pub(crate) fn new(text_keys: &'static [&'static [u8]]) -> Self {
        JsonScanner {
            depth: 0,
            objects: 0,
            in_string: false,
            escape: false,
            role: Role::Other,
            expect_key: false,
            key: [0; KEY_MAX],
            key_len: 0,
            last_key: Key::Other,
            text_value_next: false,
            capture: None,
            buf: Vec::new(),
            buf_overflow: false,
            text_keys,
            seen_object: false,
            usage_found: false,
            choices_empty: None,
            choices_next: false,
            choices_open: false,
            want_snapshot: false,
            captured: false,
            snapshot: None,
        }
    }

    /// Continue from `snap`'s state (keeping this scanner's buffer allocation).
    pub(crate) fn resume_from(&mut self, snap: &JsonScanner) {
        self.replace_keeping_buf(snap.clone());
    }

    /// Ready for another document, keeping the capture buffer's allocation (one scanner reads
    /// every event of a stream).
    pub(crate) fn reset(&mut self) {
        self.replace_keeping_buf(JsonScanner::new(self.text_keys));
    }

    fn replace_keeping_buf(&mut self, next: JsonScanner) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        *self = next;
        self.buf = buf;
    }

    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buf.capacity()
    }

    pub(crate) fn feed(&mut self, chunk: &[u8], ex: &mut Extract) {
        let n = chunk.len();
        let mut i = 0;
        // Start of the part of this chunk that belongs to the value being captured.
        let mut cap_from = 0;
        while i < n {
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    self.string_bytes(&chunk[i..i + 1], ex);
                    // An escaped key is never one of ours.
                    if self.role == Role::Key {
                        self.key_len = KEY_MAX + 1;
                    }
                    i += 1;
                    continue;
                }
                match memchr2(b'"', b'\\', &chunk[i..]) {
                    None => {
                        self.string_bytes(&chunk[i..], ex);
                        i = n;
                    }
                    Some(k) => {
                        self.string_bytes(&chunk[i..i + k], ex);
                        if chunk[i + k] == b'"' {
                            self.end_string();
                        } else {
                            self.escape = true;
                        }
                        i += k + 1;
                    }
                }
                continue;
            }
            let start = i;
            while i < n && !STRUCTURAL[chunk[i] as usize] {
                i += 1;
            }
            if self.choices_next || self.choices_open {
                self.decide_choices(&chunk[start..i], chunk.get(i).copied());
            }
            if i == n {
                break;
            }
            match chunk[i] {
                b'"' => {
                    self.in_string = true;
                    self.role = if self.expect_key {
                        self.key_len = 0;
                        Role::Key
                    } else if self.text_value_next {
                        Role::Text
                    } else {
                        Role::Other
                    };
                    self.expect_key = false;
                    self.text_value_next = false;
                    if self.role == Role::Text && self.want_snapshot {
                        self.want_snapshot = false;
                        if !self.captured {
                            // Nothing was captured, so the buffer is empty and the copy cheap.
                            self.snapshot = Some(Snapshot {
                                at: i + 1,
                                text_bytes: ex.text_bytes,
                                state: Box::new(self.clone()),
                            });
                        }
                    }
                }
                b'{' => {
                    self.push(true);
                    self.seen_object = true;
                    self.expect_key = true;
                    self.text_value_next = false;
                }
                b'[' => {
                    self.push(false);
                    self.expect_key = false;
                    self.text_value_next = false;
                    if std::mem::take(&mut self.choices_next) {
                        // Decided by the first byte inside the brackets.
                        self.choices_open = true;
                    }
                }
                c @ (b'}' | b']' | b',') => {
                    if self.depth == 1 && self.capture.is_some() {
                        self.end_capture(&chunk[cap_from..i], ex);
                    }
                    if c == b',' {
                        self.expect_key = self.top_is_object();
                    } else {
                        self.depth = self.depth.saturating_sub(1);
                        self.expect_key = false;
                        if self.depth == 0 && self.seen_object {
                            ex.complete = true;
                        }
                    }
                    self.text_value_next = false;
                }
                _ => {
                    // ':'
                    let key = std::mem::replace(&mut self.last_key, Key::Other);
                    self.expect_key = false;
                    self.text_value_next = key == Key::Text;
                    self.choices_next = key == Key::Choices;
                    if matches!(key, Key::Usage | Key::Error) {
                        self.captured = true;
                        self.capture = Some(key);
                        self.buf.clear();
                        self.buf_overflow = false;
                        cap_from = i + 1;
                    }
                }
            }
            i += 1;
        }
        if self.capture.is_some() {
            self.append_capture(&chunk[cap_from.min(n)..]);
        }
    }

    /// [`feed`](Self::feed) for a body (not a stream's event): when `chunk` is the whole
    /// document, it is read with the cursor ([`Cursor`]), which skips what does not matter in
    /// whole strings and values instead of byte by byte; anything else is fed to the tokenizer.
    /// Both read a document the same way (the usage and error values, the output text's bytes
    /// counted as the tokenizer counts them, completeness); the cursor declines whatever it
    /// does not read exactly so (malformed or deeply nested JSON, a repeated `usage` or `error`,
    /// a chunk that is only part of the document), and the tokenizer reads that.
    pub(crate) fn feed_document(&mut self, chunk: &[u8], ex: &mut Extract) {
        if !(self.at_start() && self.read_whole(chunk, ex)) {
            self.feed(chunk, ex);
        }
    }

    /// Nothing read so far changes how the next byte is read (at most whitespace or stray
    /// bytes outside any container).
    fn at_start(&self) -> bool {
        self.depth == 0 && !self.seen_object && !self.in_string
    }

    /// `chunk` as a whole document; false (and nothing recorded) if the cursor declines it.
    fn read_whole(&mut self, chunk: &[u8], ex: &mut Extract) -> bool {
        // Cheap refusals first: a chunk that does not end an object is not a whole document.
        if chunk.trim_ascii_end().last() != Some(&b'}') {
            return false;
        }
        let Ok(s) = std::str::from_utf8(chunk) else {
            return false;
        };
        let mut c = Cursor::new(s);
        let Ok(found) = whole_document(&mut c, self.text_keys) else {
            return false;
        };
        ex.text_bytes = ex.text_bytes.saturating_add(found.text_bytes);
        if let Some(r) = found.usage {
            self.usage_found |= ex.json_usage(&chunk[r]);
        }
        if let Some(r) = found.error {
            ex.json_error(&chunk[r]);
        }
        self.seen_object = true;
        ex.complete = true;
        true
    }

    /// End of body: a value cut off by the end is still tried (it will rarely parse).
    pub(crate) fn finish(&mut self, ex: &mut Extract) {
        if self.capture.is_some() {
            self.end_capture(&[], ex);
        }
    }

    /// After the top-level `choices` key (or just inside its array): `skipped` are the bytes
    /// up to `next`, the structural byte that follows (None: the chunk ended).
    fn decide_choices(&mut self, skipped: &[u8], next: Option<u8>) {
        let literal = skipped.iter().any(|b| !b.is_ascii_whitespace());
        if self.choices_next {
            if literal || next.is_some_and(|c| c != b'[') {
                self.choices_next = false;
                self.choices_empty = Some(false);
            }
            return;
        }
        if literal {
            self.choices_open = false;
            self.choices_empty = Some(false);
        } else if let Some(c) = next {
            self.choices_open = false;
            self.choices_empty = Some(c == b']');
        }
    }

    fn push(&mut self, object: bool) {
        self.depth = self.depth.saturating_add(1);
        if (1..=TRACKED_DEPTH).contains(&self.depth) {
            let bit = 1u128 << (self.depth - 1);
            if object {
                self.objects |= bit;
            } else {
                self.objects &= !bit;
            }
        }
    }

    fn top_is_object(&self) -> bool {
        (1..=TRACKED_DEPTH).contains(&self.depth) && self.objects & (1u128 << (self.depth - 1)) != 0
    }

    fn string_bytes(&mut self, bytes: &[u8], ex: &mut Extract) {
        match self.role {
            Role::Text => ex.text_bytes = ex.text_bytes.saturating_add(bytes.len() as u64),
            Role::Key => {
                let end = self.key_len.saturating_add(bytes.len());
                if end <= KEY_MAX {
                    self.key[self.key_len..end].copy_from_slice(bytes);
                }
                self.key_len = end;
            }
            Role::Other => {}
        }
    }

    fn end_string(&mut self) {
        self.in_string = false;
        if self.role != Role::Key {
            return;
        }
        let key = self.key.get(..self.key_len).unwrap_or(&[]);
        self.last_key = if self.key_len > KEY_MAX {
            Key::Other
        } else if self.depth == 1 && key == b"usage" {
            Key::Usage
        } else if self.depth == 1 && key == b"error" {
            Key::Error
        } else if self.depth == 1 && key == b"choices" {
            Key::Choices
        } else if self.depth >= 2 && self.text_keys.contains(&key) {
            Key::Text
        } else {
            Key::Other
        };
    }

    fn append_capture(&mut self, bytes: &[u8]) {
        if self.buf_overflow {
            return;
        }
        if !extend_capped(&mut self.buf, bytes, CAPTURE_MAX) {
            self.buf_overflow = true;
            self.buf = Vec::new();
        }
    }

    fn end_capture(&mut self, tail: &[u8], ex: &mut Extract) {
        self.append_capture(tail);
        let key = self.capture.take();
        if !self.buf_overflow {
            match key {
                Some(Key::Usage) => self.usage_found |= ex.json_usage(&self.buf),
                Some(Key::Error) => ex.json_error(&self.buf),
                _ => {}
            }
        }
        self.buf.clear();
        self.buf_overflow = false;
    }
}

/// What [`whole_document`] found.
struct Whole {
    text_bytes: u64,
    usage: Option<std::ops::Range<usize>>,
    error: Option<std::ops::Range<usize>>,
}

/// A top-level object and nothing after it but whitespace: the ranges of its `usage` and
/// `error` values and the bytes of its output text, counted as [`JsonScanner`] counts them.
fn whole_document(c: &mut Cursor<'_>, keys: &[&[u8]]) -> Result<Whole, Bail> {
    let mut w = Whole {
        text_bytes: 0,
        usage: None,
        error: None,
    };
    c.ws();
    if c.peek() != Some(b'{') {
        return Err(Bail);
    }
    c.members(false, |c, key| {
        let slot = match key {
            Str::Raw(r) => match &c.b[r] {
                b"usage" => Some(&mut w.usage),
                b"error" => Some(&mut w.error),
                _ => None,
            },
            // An escaped key is never one of ours (nor, for the tokenizer, a text key).
            Str::Scratch => None,
        };
        c.ws();
        let start = c.i;
        // The tokenizer counts text keys inside these values too.
        value(c, false, keys, &mut w.text_bytes)?;
        if let Some(slot) = slot {
            if slot.is_some() {
                // The tokenizer reads each; leave a repeated key to it.
                return Err(Bail);
            }
            *slot = Some(start..c.i);
        }
        Ok(())
    })?;
    if !c.at_end() {
        return Err(Bail);
    }
    Ok(w)
}

/// One value inside the top-level object; `text`: it is the value of a text key, so if it is a
/// string its bytes are output text.
fn value(c: &mut Cursor<'_>, text: bool, keys: &[&[u8]], n: &mut u64) -> Result<(), Bail> {
    c.ws();
    match c.peek() {
        Some(b'"') => {
            let start = c.i + 1;
            let s = c.string(false)?;
            if text {
                let bytes = match s {
                    Str::Raw(r) => r.len(),
                    // The tokenizer counts an escape as the byte after its backslash.
                    Str::Scratch => {
                        let raw = c.b.get(start..c.i - 1).ok_or(Bail)?;
                        raw.len() - escapes(raw)
                    }
                };
                *n = n.saturating_add(bytes as u64);
            }
            Ok(())
        }
        Some(b'{') => c.members(false, |c, key| {
            // Every key below the top level may be a text key.
            let is_text = match key {
                Str::Raw(r) => keys.contains(&&c.b[r]),
                Str::Scratch => false,
            };
            value(c, is_text, keys, n)
        }),
        Some(b'[') => c.elements(|c| value(c, false, keys, n)),
        _ => c.skip(),
    }
}

/// The escapes in a string's raw bytes (each backslash that starts one).
fn escapes(raw: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while let Some(k) = raw.get(i..).and_then(|r| memchr(b'\\', r)) {
        n += 1;
        i += k + 2;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::usage::{UsageScanner, WireFormat};
    use proptest::prelude::*;

    /// What a read left behind, to compare the cursor's with the tokenizer's.
    #[derive(Debug, PartialEq)]
    struct Seen {
        usage: crate::engine::usage::Usage,
        reasoning: Option<u64>,
        text: u64,
        error: Option<String>,
        complete: bool,
        usage_found: bool,
    }

    fn seen(j: &JsonScanner, ex: &Extract) -> Seen {
        Seen {
            usage: ex.usage,
            reasoning: ex.reasoning_tokens,
            text: ex.text_bytes,
            error: ex.error.clone(),
            complete: ex.complete,
            usage_found: j.usage_found,
        }
    }

    /// (read by the cursor, what it saw, what the tokenizer alone sees)
    fn both(format: WireFormat, doc: &[u8]) -> (bool, Seen, Seen) {
        let mut ex = UsageScanner::new(format, false, false).ex;
        let mut j = JsonScanner::new(format.json_text_keys());
        let fast = j.read_whole(doc, &mut ex);
        if !fast {
            j.feed(doc, &mut ex);
        }
        j.finish(&mut ex);
        let a = seen(&j, &ex);
        let mut ex = UsageScanner::new(format, false, false).ex;
        let mut j = JsonScanner::new(format.json_text_keys());
        j.feed(doc, &mut ex);
        j.finish(&mut ex);
        (fast, a, seen(&j, &ex))
    }

    #[test]
    fn every_json_fixture_is_read_by_the_cursor_as_the_tokenizer_reads_it() {
        let fixtures: [(WireFormat, &[u8]); 5] = [
            (
                WireFormat::OpenAiChat,
                include_bytes!("fixtures/openai_chat_json.txt"),
            ),
            (
                WireFormat::OpenAiCompletions,
                include_bytes!("fixtures/openai_completions_json.txt"),
            ),
            (
                WireFormat::OpenAiEmbeddings,
                include_bytes!("fixtures/openai_embeddings_json.txt"),
            ),
            (
                WireFormat::OpenAiResponses,
                include_bytes!("fixtures/openai_responses_json.txt"),
            ),
            (
                WireFormat::AnthropicMessages,
                include_bytes!("fixtures/anthropic_messages_json.txt"),
            ),
        ];
        for (format, doc) in fixtures {
            let (fast, a, b) = both(format, doc);
            assert!(fast, "{format:?}: the cursor declined a provider's body");
            assert!(a.usage_found && a.complete, "{format:?}: {a:?}");
            assert_eq!(a, b, "{format:?}");
        }
    }

    #[test]
    fn the_cursor_declines_what_it_must_leave_to_the_tokenizer() {
        let f = WireFormat::OpenAiChat;
        for doc in [
            &br#"{"usage":{"prompt_tokens":1},"usage":{"completion_tokens":2}}"#[..],
            br#"{"error":{"message":"a"},"error":{"message":"b"}}"#,
            br#"{"id":"x","choices":[{"message":{"content":"hi"}}]"#,
            br#"{"id":"x"} {"usage":{"prompt_tokens":1}}"#,
            br#"[{"usage":{"prompt_tokens":1}}]"#,
            br#"{"a":tru}"#,
        ] {
            let (fast, a, b) = both(f, doc);
            assert!(!fast, "{}", String::from_utf8_lossy(doc));
            assert_eq!(a, b);
        }
        // Part of a document: the tokenizer reads it, and the rest after it.
        let mut ex = UsageScanner::new(f, false, false).ex;
        let mut j = JsonScanner::new(f.json_text_keys());
        j.feed_document(br#"{"choices":[{"message":{"content":"hi"}}],"#, &mut ex);
        j.feed_document(
            br#""usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            &mut ex,
        );
        j.finish(&mut ex);
        assert_eq!(
            (ex.text_bytes, ex.usage.prompt_tokens, ex.complete),
            (2, Some(3), true)
        );
    }

    fn string() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(
                &[
                    "a",
                    "é",
                    " ",
                    "\\n",
                    "\\\"",
                    "\\\\",
                    "\\u00e9",
                    "\\ud83d\\ude00",
                    "\\/",
                ][..],
            ),
            0..6,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()))
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(
            &[
                "content",
                "text",
                "refusal",
                "arguments",
                "thinking",
                "usage",
                "error",
                "choices",
                "message",
                "id",
                "cont\\u0065nt",
                "us\\u0061ge",
                "prompt_tokens",
                "completion_tokens",
            ][..],
        )
        .prop_map(|k| format!("\"{k}\""))
    }

    fn json(depth: u32) -> BoxedStrategy<String> {
        let leaf = prop_oneof![
            string(),
            (0u64..1000).prop_map(|n| n.to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("-1.5e3".to_string()),
        ];
        if depth == 0 {
            return leaf.boxed();
        }
        let ws = prop::sample::select(&["", " ", "\n  "][..]);
        prop_oneof![
            2 => leaf,
            1 => (prop::collection::vec((key(), json(depth - 1)), 0..5), ws.clone())
                .prop_map(|(m, ws)| {
                    let inner: Vec<String> = m.iter().map(|(k, v)| format!("{ws}{k}{ws}:{ws}{v}")).collect();
                    format!("{{{}{ws}}}", inner.join(","))
                }),
            1 => (prop::collection::vec(json(depth - 1), 0..4), ws)
                .prop_map(|(v, ws)| format!("[{ws}{}{ws}]", v.join(","))),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn a_whole_document_is_read_by_the_cursor_as_the_tokenizer_reads_it(
            members in prop::collection::vec((key(), json(3)), 0..6),
            fi in 0..5usize,
            trailing in prop::sample::select(&["", "\n", " \r\n"][..]),
        ) {
            let format = [
                WireFormat::OpenAiChat,
                WireFormat::OpenAiCompletions,
                WireFormat::OpenAiEmbeddings,
                WireFormat::OpenAiResponses,
                WireFormat::AnthropicMessages,
            ][fi];
            let inner: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let doc = format!("{{{}}}{trailing}", inner.join(","));
            let (fast, a, b) = both(format, doc.as_bytes());
            prop_assert_eq!(&a, &b, "{}", doc);
            // Valid JSON is declined only for a repeated usage or error key.
            let repeats = ["\"usage\"", "\"error\""]
                .iter()
                .any(|k| members.iter().filter(|(m, _)| m == k).count() > 1);
            prop_assert_eq!(fast, !repeats, "{}", doc);
        }
    }
}
