//! A cursor over a JSON document already known to be UTF-8, for the hot paths that read one
//! without serde (the prompt walk, `prompt/fast.rs`; the streamed usage events, `usage/wire.rs`).
//! It checks the document as it goes, and declines ([`Bail`]) whatever serde_json might read
//! differently: malformed JSON, nesting deeper than [`MAX_DEPTH`], numbers too long for
//! serde_json's f64, invalid escapes and lone surrogates, raw control characters in strings.
//! It is at least as strict as serde_json at every point, so a caller that falls back to serde
//! on [`Bail`] reads exactly what serde would have, only faster in the common case.
//!
//! Strings are found with `memchr2` (SIMD) after a word-at-a-time look at their first 16 bytes;
//! a string without escapes is a range of the document, one with escapes is unescaped into one
//! reused buffer.
//!
//! Pure: no pingora, no tokio, no I/O.

use std::ops::Range;

/// The cursor declines this document: read it with serde instead.
#[derive(Debug)]
pub(crate) struct Bail;

/// Containers nested deeper than this are declined (serde_json's own limit for the values it
/// deserializes is 128; the values it skips it skips at any depth).
pub(crate) const MAX_DEPTH: u32 = 100;

/// Where a string's (unescaped) text is.
pub(crate) enum Str {
    /// The document's own bytes.
    Raw(Range<usize>),
    /// The cursor's scratch buffer (the string had escapes).
    Scratch,
}

impl Str {
    /// The string's offset in the document, when it is the document's own bytes.
    pub(crate) fn at(&self) -> Option<usize> {
        match self {
            Str::Raw(r) => Some(r.start),
            Str::Scratch => None,
        }
    }
}

pub(crate) struct Cursor<'b> {
    pub(crate) s: &'b str,
    pub(crate) b: &'b [u8],
    pub(crate) i: usize,
    depth: u32,
    /// The last unescaped string.
    pub(crate) scratch: String,
}

impl<'b> Cursor<'b> {
    pub(crate) fn new(s: &'b str) -> Cursor<'b> {
        Cursor {
            s,
            b: s.as_bytes(),
            i: 0,
            depth: 0,
            scratch: String::new(),
        }
    }

    /// Whitespace, then the end of the document?
    pub(crate) fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skip whitespace, then consume `c` or decline.
    pub(crate) fn eat(&mut self, c: u8) -> Result<(), Bail> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// After a member or an element: true if another follows (`,`), false at `close`.
    pub(crate) fn more(&mut self, close: u8) -> Result<bool, Bail> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(Bail),
        }
    }

    /// At an opening bracket: consume it; false if the container is empty (and consumed).
    pub(crate) fn open(&mut self, close: u8) -> Result<bool, Bail> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Bail);
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            self.depth -= 1;
            return Ok(false);
        }
        Ok(true)
    }

    pub(crate) fn close(&mut self) {
        self.depth -= 1;
    }

    /// Where the cursor is, for [`Cursor::back_to`].
    pub(crate) fn mark(&self) -> (usize, u32) {
        (self.i, self.depth)
    }

    /// Back to a [`Cursor::mark`], to read the same value another way.
    pub(crate) fn back_to(&mut self, (i, depth): (usize, u32)) {
        self.i = i;
        self.depth = depth;
    }

    pub(crate) fn text(&self, s: &Str) -> &str {
        match s {
            Str::Raw(r) => self.s.get(r.clone()).unwrap_or_default(),
            Str::Scratch => &self.scratch,
        }
    }

    /// A value where only a string means something: the string, or `None` (skipped).
    pub(crate) fn string_value(&mut self) -> Result<Option<Str>, Bail> {
        self.ws();
        if self.peek() == Some(b'"') {
            self.string(true).map(Some)
        } else {
            self.skip().map(|()| None)
        }
    }

    /// At `{`: each member in turn, `f` called with its key (see [`Cursor::string`] for
    /// `unescape`) and the cursor at its value, which `f` must consume.
    pub(crate) fn members(
        &mut self,
        unescape: bool,
        mut f: impl FnMut(&mut Self, Str) -> Result<(), Bail>,
    ) -> Result<(), Bail> {
        if self.open(b'}')? {
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(Bail);
                }
                let key = self.string(unescape)?;
                self.eat(b':')?;
                f(self, key)?;
                if !self.more(b'}')? {
                    break;
                }
            }
            self.close();
        }
        Ok(())
    }

    /// At `[`: `f` called with the cursor at each element, which it must consume.
    pub(crate) fn elements(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<(), Bail>,
    ) -> Result<(), Bail> {
        if self.open(b']')? {
            loop {
                f(self)?;
                if !self.more(b']')? {
                    break;
                }
            }
            self.close();
        }
        Ok(())
    }

    /// Any value, checked and not looked at.
    pub(crate) fn skip(&mut self) -> Result<(), Bail> {
        self.ws();
        match self.peek() {
            Some(b'"') => self.string(false).map(drop),
            Some(b'{') => self.members(false, |c, _| c.skip()),
            Some(b'[') => self.elements(Cursor::skip),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Bail),
        }
    }

    pub(crate) fn literal(&mut self, word: &[u8]) -> Result<(), Bail> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// A number by JSON's grammar (what follows it is the caller's to check). Declines the
    /// ones serde_json could turn into an infinite f64 (an error where it walks the value):
    /// more than 200 integer digits, or an exponent of three digits or more.
    pub(crate) fn number(&mut self) -> Result<(), Bail> {
        let b = self.b;
        let mut j = self.i;
        if b.get(j) == Some(&b'-') {
            j += 1;
        }
        let int = j;
        match b.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => j = digits(b, j),
            _ => return Err(Bail),
        }
        if j - int > 200 {
            return Err(Bail);
        }
        if b.get(j) == Some(&b'.') {
            let frac = j + 1;
            j = digits(b, frac);
            if j == frac {
                return Err(Bail);
            }
        }
        if let Some(b'e' | b'E') = b.get(j) {
            j += 1;
            if let Some(b'+' | b'-') = b.get(j) {
                j += 1;
            }
            let exp = j;
            j = digits(b, exp);
            if j == exp || j - exp > 2 {
                return Err(Bail);
            }
        }
        self.i = j;
        Ok(())
    }

    /// At an opening quote: the string, unescaped into the scratch buffer when it has escapes
    /// and `unescape` is set (otherwise an escaped string's text is not to be read). Moves
    /// past the closing quote.
    pub(crate) fn string(&mut self, unescape: bool) -> Result<Str, Bail> {
        let start = self.i + 1;
        let mut seg = start;
        let mut escaped = false;
        loop {
            let j = special(self.b, seg)?;
            if self.b[j] == b'"' {
                self.i = j + 1;
                if !escaped {
                    return Ok(Str::Raw(start..j));
                }
                if unescape {
                    self.scratch.push_str(self.s.get(seg..j).ok_or(Bail)?);
                }
                return Ok(Str::Scratch);
            }
            // A backslash.
            if unescape {
                if !escaped {
                    self.scratch.clear();
                }
                self.scratch.push_str(self.s.get(seg..j).ok_or(Bail)?);
            }
            escaped = true;
            seg = self.escape(j + 1, unescape)?;
        }
    }

    /// Just after a backslash at `j - 1`: decode one escape (pushing it when `out`) and
    /// return the index after it. Surrogates must come in pairs, as serde_json requires for
    /// text.
    pub(crate) fn escape(&mut self, j: usize, out: bool) -> Result<usize, Bail> {
        let c = match self.b.get(j) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let n = hex4(self.b, j + 1)?;
                let (code, next) = match n {
                    0xD800..=0xDBFF => {
                        if self.b.get(j + 5..j + 7) != Some(b"\\u") {
                            return Err(Bail);
                        }
                        let low = hex4(self.b, j + 7)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(Bail);
                        }
                        (0x10000 + ((n - 0xD800) << 10) + (low - 0xDC00), j + 11)
                    }
                    0xDC00..=0xDFFF => return Err(Bail),
                    _ => (n, j + 5),
                };
                if out {
                    self.scratch.push(char::from_u32(code).ok_or(Bail)?);
                }
                return Ok(next);
            }
            _ => return Err(Bail),
        };
        if out {
            self.scratch.push(c);
        }
        Ok(j + 1)
    }
}

/// The end of a run of ASCII digits starting at `j`.
fn digits(b: &[u8], mut j: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(j) {
        j += 1;
    }
    j
}

fn hex4(b: &[u8], j: usize) -> Result<u32, Bail> {
    let digits = b.get(j..j + 4).ok_or(Bail)?;
    digits.iter().try_fold(0u32, |n, &c| {
        let d = (c as char).to_digit(16).ok_or(Bail)?;
        Ok(n << 4 | d)
    })
}

/// The index of the first `"` or `\` at or after `from`; declines on a control character
/// before it (JSON forbids them raw in strings) or when there is none.
pub(crate) fn special(b: &[u8], from: usize) -> Result<usize, Bail> {
    let rest = b.get(from..).ok_or(Bail)?;
    // Most strings are short (keys, types, names): their first 16 bytes are looked at a word
    // at a time, which is cheaper than memchr's set-up; longer ones go on with memchr2.
    const SHORT: usize = 16;
    let mut k = 0;
    while k < SHORT {
        let Some(word) = rest.get(k..k + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) else {
            // Fewer than 8 bytes left in the body.
            let tail = &rest[k..];
            let n = tail
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .ok_or(Bail)?;
            return found(rest, from, k + n);
        };
        let hits = specials(u64::from_le_bytes(word));
        if hits != 0 {
            return found(rest, from, k + hits.trailing_zeros() as usize / 8);
        }
        k += 8;
    }
    let long = &rest[SHORT..];
    let n = memchr::memchr2(b'"', b'\\', long).ok_or(Bail)?;
    if has_control(&long[..n]) {
        return Err(Bail);
    }
    Ok(from + SHORT + n)
}

/// `rest[n]` is the first special byte: its index in the body, or a decline if it is a
/// control character.
fn found(rest: &[u8], from: usize, n: usize) -> Result<usize, Bail> {
    match rest.get(n) {
        Some(b'"' | b'\\') => Ok(from + n),
        _ => Err(Bail),
    }
}

/// The high bit of each byte of `w` (little-endian) that is `"`, `\` or below 0x20; bits above
/// the lowest set one may be false (a borrow runs upward), the lowest is exact.
pub(crate) fn specials(w: u64) -> u64 {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) & HIGH
}

/// Whether `b` holds a byte below 0x20. A minimum with no early exit: the loop vectorises
/// (one `pminub` per 16 bytes).
pub(crate) fn has_control(b: &[u8]) -> bool {
    b.iter().fold(u8::MAX, |low, &c| low.min(c)) < 0x20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_scan_finds_the_first_special_byte_wherever_it_is() {
        // The scan is word-at-a-time for 16 bytes, then memchr: try the special byte at every
        // position across both, after fillers that sit next to the bit tricks' edges.
        let naive = |b: &[u8], from: usize| -> Option<usize> {
            let n = b[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            (b[from + n] >= 0x20).then_some(from + n)
        };
        for filler in [
            b'a', b' ', b'!', 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xa0, 0xe9, 0xff,
        ] {
            for len in 0..48 {
                for byte in [b'"', b'\\', 0x00, 0x01, 0x1f, b'\n', b'\t'] {
                    for from in [0, 1, 3] {
                        let mut b = vec![b'x'; from];
                        b.extend(std::iter::repeat_n(filler, len));
                        b.push(byte);
                        b.extend_from_slice(b"tail\"");
                        assert_eq!(
                            special(&b, from).ok(),
                            naive(&b, from),
                            "{filler:#x} x {len}, then {byte:#x}"
                        );
                    }
                }
                // No special byte before the end of the body.
                let b = vec![filler; len];
                assert!(special(&b, 0).is_err());
            }
        }
    }
}
