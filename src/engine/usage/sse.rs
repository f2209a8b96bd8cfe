//! Incremental Server-Sent Events framing (WHATWG HTML, "Interpreting an event stream").
//!
//! The parser is a line state machine that never needs a whole line in one piece: a field name
//! is at most a few bytes and is the only thing buffered on its own; a `data:` value is appended
//! straight to the event's data buffer, or, in the common case of a single `data:` line lying
//! wholly inside the current chunk, merely remembered as a range of that chunk and handed to the
//! consumer without any copy.

use memchr::{memchr2, memchr3};

use super::extend_capped;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";
/// Longer than any field name that matters (`event`, `data`): longer names are ignored fields.
const FIELD_MAX: usize = 8;
/// Event names that matter are short (`response.function_call_arguments.delta` is 39); a longer
/// name is reported as unknown, which makes the consumer look at the data instead.
const NAME_MAX: usize = 64;
/// A data buffer that grew past this for one big event is released after it, so one
/// `response.completed` does not pin megabytes for the rest of a long stream.
const KEEP_CAPACITY: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Data,
    Event,
    Ignore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Start,
    Field,
    /// After the colon: one optional space still to be skipped.
    AfterColon(Sink),
    Value(Sink),
}

/// What a blank line ended.
#[derive(Debug)]
pub(crate) enum Dispatch<'a> {
    /// No data lines: per the spec no event fires (comments, `id:`/`retry:` only blocks).
    Empty,
    /// The event's data outgrew the cap and was dropped.
    Overflow,
    Event {
        /// `None` when no `event:` line was given (or it was empty or too long).
        name: Option<&'a [u8]>,
        data: &'a [u8],
    },
}

pub(crate) struct SseParser {
    line: Line,
    field: [u8; FIELD_MAX],
    /// May exceed `FIELD_MAX`: then the field is one we ignore.
    field_len: usize,
    /// The last chunk ended in `\r`; a `\n` opening the next one belongs to the same line end.
    pending_cr: bool,
    /// Bytes of a leading byte-order mark matched so far; 3 once the question is settled.
    bom_pos: usize,
    data: Vec<u8>,
    data_lines: u32,
    /// The event's only data line so far, as a range of the chunk being fed.
    borrowed: Option<(usize, usize)>,
    data_overflow: bool,
    name: [u8; NAME_MAX],
    name_len: usize,
    max_event: usize,
}

impl SseParser {
    pub(crate) fn new(max_event: usize) -> Self {
        SseParser {
            line: Line::Start,
            field: [0; FIELD_MAX],
            field_len: 0,
            pending_cr: false,
            bom_pos: 0,
            data: Vec::new(),
            data_lines: 0,
            borrowed: None,
            data_overflow: false,
            name: [0; NAME_MAX],
            name_len: 0,
            max_event,
        }
    }

    #[cfg(test)]
    pub(crate) fn set_max_event(&mut self, max_event: usize) {
        self.max_event = max_event;
    }

    /// True when the previous chunk ended in a `\r` whose possible `\n` has not been seen yet.
    pub(crate) fn pending_cr(&self) -> bool {
        self.pending_cr
    }

    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.data.capacity()
    }

    /// Feeds one chunk. `on(dispatch, end)` is called at every blank line, `end` being the chunk
    /// offset just past that blank line's terminator.
    pub(crate) fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(Dispatch<'_>, usize)) {
        let n = chunk.len();
        let mut i = 0;
        while self.bom_pos < BOM.len() && i < n {
            if chunk[i] == BOM[self.bom_pos] {
                self.bom_pos += 1;
                i += 1;
            } else {
                // Not a BOM; a partial match is dropped, which only garbles an already
                // malformed first field name.
                self.bom_pos = BOM.len();
            }
        }
        if self.pending_cr && i < n {
            self.pending_cr = false;
            if chunk[i] == b'\n' {
                i += 1;
            }
        }
        // Where the current data line's value began, if it began in this chunk.
        let mut fresh_value = false;
        while i < n {
            match self.line {
                Line::Start => match chunk[i] {
                    b'\n' | b'\r' => {
                        i = self.eol(chunk, i);
                        self.dispatch(chunk, i, &mut on);
                    }
                    b':' => {
                        self.line = Line::Value(Sink::Ignore);
                        i += 1;
                    }
                    _ => {
                        self.line = Line::Field;
                        self.field_len = 0;
                    }
                },
                Line::Field => {
                    let rest = &chunk[i..];
                    match memchr3(b':', b'\r', b'\n', rest) {
                        None => {
                            self.push_field(rest);
                            i = n;
                        }
                        Some(k) => {
                            self.push_field(&rest[..k]);
                            let sink = self.sink();
                            if rest[k] == b':' {
                                self.line = Line::AfterColon(sink);
                                i += k + 1;
                            } else {
                                // A line without a colon names a field whose value is empty.
                                self.begin_value(chunk, sink);
                                i = self.eol(chunk, i + k);
                                self.line = Line::Start;
                            }
                        }
                    }
                }
                Line::AfterColon(sink) => {
                    if chunk[i] == b' ' {
                        i += 1;
                    }
                    self.begin_value(chunk, sink);
                    self.line = Line::Value(sink);
                    fresh_value = true;
                }
                Line::Value(sink) => {
                    let rest = &chunk[i..];
                    let (k, done) = match memchr2(b'\r', b'\n', rest) {
                        Some(k) => (k, true),
                        None => (rest.len(), false),
                    };
                    match sink {
                        Sink::Data => {
                            if done && fresh_value && self.data_lines == 1 && !self.data_overflow {
                                if k > self.max_event {
                                    self.data_overflow = true;
                                } else {
                                    self.borrowed = Some((i, i + k));
                                }
                            } else {
                                self.append_data(chunk, &rest[..k]);
                            }
                        }
                        Sink::Event => self.push_name(&rest[..k]),
                        Sink::Ignore => {}
                    }
                    fresh_value = false;
                    if done {
                        i = self.eol(chunk, i + k);
                        self.line = Line::Start;
                    } else {
                        i = n;
                    }
                }
            }
        }
        // The chunk is about to go away: keep what the event still needs of it.
        self.materialize(chunk);
    }

    /// End of the body. The spec drops an unterminated event; we still hand it over (with
    /// `end` 0) because a provider that omits the final blank line still reported its usage.
    pub(crate) fn finish(&mut self, mut on: impl FnMut(Dispatch<'_>, usize)) {
        match self.line {
            Line::Field => {
                let sink = self.sink();
                self.begin_value(&[], sink);
            }
            Line::AfterColon(sink) => self.begin_value(&[], sink),
            Line::Start | Line::Value(_) => {}
        }
        self.line = Line::Start;
        self.pending_cr = false;
        if self.data_lines > 0 {
            self.dispatch(&[], 0, &mut on);
        } else {
            self.name_len = 0;
        }
    }

    /// Consumes the line terminator at `pos` and returns the offset just past it.
    fn eol(&mut self, chunk: &[u8], pos: usize) -> usize {
        if chunk[pos] == b'\r' {
            match chunk.get(pos + 1) {
                Some(b'\n') => pos + 2,
                Some(_) => pos + 1,
                None => {
                    self.pending_cr = true;
                    pos + 1
                }
            }
        } else {
            pos + 1
        }
    }

    fn push_field(&mut self, bytes: &[u8]) {
        let end = self.field_len + bytes.len();
        if end <= FIELD_MAX {
            self.field[self.field_len..end].copy_from_slice(bytes);
        }
        self.field_len = end;
    }

    fn sink(&self) -> Sink {
        match self.field.get(..self.field_len) {
            Some(b"data") => Sink::Data,
            Some(b"event") => Sink::Event,
            _ => Sink::Ignore,
        }
    }

    fn begin_value(&mut self, chunk: &[u8], sink: Sink) {
        match sink {
            Sink::Data => {
                if self.data_lines > 0 {
                    // The spec joins data lines with a line feed.
                    self.append_data(chunk, b"\n");
                }
                self.data_lines = self.data_lines.saturating_add(1);
            }
            Sink::Event => self.name_len = 0,
            Sink::Ignore => {}
        }
    }

    fn push_name(&mut self, bytes: &[u8]) {
        let end = self.name_len.saturating_add(bytes.len());
        if end <= NAME_MAX {
            self.name[self.name_len..end].copy_from_slice(bytes);
        }
        self.name_len = end;
    }

    fn materialize(&mut self, chunk: &[u8]) {
        if let Some((a, b)) = self.borrowed.take() {
            self.data.extend_from_slice(&chunk[a..b]);
        }
    }

    fn append_data(&mut self, chunk: &[u8], bytes: &[u8]) {
        if self.data_overflow {
            return;
        }
        self.materialize(chunk);
        if !extend_capped(&mut self.data, bytes, self.max_event) {
            self.data_overflow = true;
            self.data = Vec::new();
        }
    }

    fn dispatch(&mut self, chunk: &[u8], end: usize, on: &mut impl FnMut(Dispatch<'_>, usize)) {
        if self.data_lines == 0 {
            on(Dispatch::Empty, end);
        } else if self.data_overflow {
            on(Dispatch::Overflow, end);
        } else {
            let data = match self.borrowed {
                Some((a, b)) => &chunk[a..b],
                None => &self.data[..],
            };
            let name = match self.name_len {
                1..=NAME_MAX => Some(&self.name[..self.name_len]),
                _ => None,
            };
            on(Dispatch::Event { name, data }, end);
        }
        self.data_lines = 0;
        self.data_overflow = false;
        self.borrowed = None;
        self.name_len = 0;
        if self.data.capacity() > KEEP_CAPACITY {
            self.data = Vec::new();
        } else {
            self.data.clear();
        }
    }
}
