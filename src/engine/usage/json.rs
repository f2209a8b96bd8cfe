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

use memchr::memchr2;

use super::{extend_capped, Extract};

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
