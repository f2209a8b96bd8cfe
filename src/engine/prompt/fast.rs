//! The prompt walk in one pass over the bytes of a body already known to be UTF-8, without
//! serde: the same schema ([`Node`]) and the same counting ([`Acc`]) as the serde walk in the
//! parent module, which stays the reference.
//!
//! Why: the gateway walks every prompt it forwards, and agents send 40–120 KB of them per
//! turn. serde_json's walk validates each string's UTF-8 again and scans strings eight bytes
//! at a time; here the body is validated once by the caller, a string's end is found with
//! `memchr2` (SIMD) and its control-character check is a branch-free loop the compiler
//! vectorises. A text without escapes is passed as a slice of the body, with its offset; one
//! with escapes is unescaped into one reused buffer.
//!
//! It declines ([`Bail`]) whatever the reference might read differently: malformed JSON,
//! nesting deeper than [`MAX_DEPTH`], numbers too long for serde_json's f64, invalid escapes
//! and lone surrogates, anything after the body. It is at least as strict as serde_json at
//! every point, so whatever it passed on before declining is what the reference reads first;
//! the parent then runs the reference walk on the same body.
//!
//! Pure: no pingora, no tokio, no I/O.

use std::borrow::Cow;
use std::ops::Range;

use super::{Acc, Media, Node, Tag, K};

/// The fast walk declines this body: run the reference.
#[derive(Debug)]
pub(super) struct Bail;

/// Containers nested deeper than this are left to the reference (serde_json's own limit for
/// the values it walks is 128; the values it skips it skips at any depth).
const MAX_DEPTH: u32 = 100;

/// Walk `body`, which must be one JSON object of format `node`, calling `member` with each
/// top-level member's key and value range.
pub(super) fn walk(
    node: Node,
    body: &str,
    acc: &mut Acc<'_>,
    member: &mut dyn FnMut(&str, Range<usize>),
) -> Result<(), Bail> {
    let mut p = Parser {
        s: body,
        b: body.as_bytes(),
        i: 0,
        depth: 0,
        scratch: String::new(),
    };
    p.ws();
    if p.peek() != Some(b'{') {
        return Err(Bail);
    }
    p.object(node, acc, Some(member))?;
    p.ws();
    if p.i == p.b.len() {
        Ok(())
    } else {
        Err(Bail)
    }
}

/// Where a string's (unescaped) text is.
enum Str {
    /// The body's own bytes.
    Raw(Range<usize>),
    /// The parser's scratch buffer (the string had escapes).
    Scratch,
}

struct Parser<'b> {
    s: &'b str,
    b: &'b [u8],
    i: usize,
    depth: u32,
    /// The last unescaped string.
    scratch: String,
}

impl<'b> Parser<'b> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skip whitespace, then consume `c` or decline.
    fn eat(&mut self, c: u8) -> Result<(), Bail> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// After a member or an element: true if another follows (`,`), false at `close`.
    fn more(&mut self, close: u8) -> Result<bool, Bail> {
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
    fn open(&mut self, close: u8) -> Result<bool, Bail> {
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

    fn close(&mut self) {
        self.depth -= 1;
    }

    fn text(&self, s: &Str) -> &str {
        match s {
            Str::Raw(r) => self.s.get(r.clone()).unwrap_or_default(),
            Str::Scratch => &self.scratch,
        }
    }

    /// One value of kind `node`, walked as the reference walks it.
    fn value(&mut self, node: Node, acc: &mut Acc<'_>) -> Result<(), Bail> {
        if matches!(node, Node::Ignore | Node::Image) {
            return self.skip();
        }
        self.ws();
        match self.peek() {
            Some(b'{') => self.object(node, acc, None),
            Some(b'[') => self.array(node, acc),
            Some(b'"') => {
                let s = self.string(true)?;
                let at = match &s {
                    Str::Raw(r) => Some(r.start),
                    Str::Scratch => None,
                };
                node.string(self.text(&s), at, acc);
                Ok(())
            }
            Some(b't') => self.literal(b"true").map(|()| node.scalar(acc)),
            Some(b'f') => self.literal(b"false").map(|()| node.scalar(acc)),
            Some(b'n') => self.literal(b"null").map(|()| node.scalar(acc)),
            Some(b'-' | b'0'..=b'9') => self.number().map(|()| node.number(acc)),
            _ => Err(Bail),
        }
    }

    fn array(&mut self, node: Node, acc: &mut Acc<'_>) -> Result<(), Bail> {
        let element = node.element();
        let structural = node.structural();
        if structural {
            acc.extra(2);
        }
        if !self.open(b']')? {
            return Ok(());
        }
        loop {
            self.value(element, acc)?;
            if structural {
                acc.extra(1);
            }
            if !self.more(b']')? {
                break;
            }
        }
        self.close();
        Ok(())
    }

    /// An object; `member` is given for the body itself.
    fn object(
        &mut self,
        node: Node,
        acc: &mut Acc<'_>,
        mut member: Option<&mut dyn FnMut(&str, Range<usize>)>,
    ) -> Result<(), Bail> {
        if node == Node::AnthropicSource {
            return self.anthropic_source(acc);
        }
        let structural = node.structural();
        if structural {
            acc.extra(2);
        }
        let mut tag = Tag::Other;
        let mut image = false;
        if self.open(b'}')? {
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(Bail);
                }
                let key = self.string(true)?;
                let name = self.text(&key);
                let (k, len) = (K::of(name), name.len());
                // The member callback wants the key after the value, which may reuse the
                // scratch buffer: keep an escaped key (rare) aside.
                let escaped_key = match (&key, member.is_some()) {
                    (Str::Scratch, true) => Some(self.scratch.clone()),
                    _ => None,
                };
                self.eat(b':')?;
                if structural {
                    acc.extra(len.saturating_add(4));
                }
                if k == K::Type && node.captures_type() {
                    tag = self.tag()?;
                } else {
                    if node.is_body() && matches!(k, K::Tools | K::Functions) {
                        acc.tools = true;
                    }
                    let child = node.child(k);
                    image |= child == Node::Image;
                    self.ws();
                    let start = self.i;
                    self.value(child, acc)?;
                    if let Some(m) = member.as_mut() {
                        let name = match &escaped_key {
                            Some(name) => name.as_str(),
                            None => self.text(&key),
                        };
                        m(name, start..self.i);
                    }
                }
                if !self.more(b'}')? {
                    break;
                }
            }
            self.close();
        }
        if node.is_message() {
            acc.messages += 1;
        }
        let typed_image = match node {
            Node::ResponsesContent => matches!(tag, Tag::InputImage | Tag::ComputerScreenshot),
            Node::AnthropicContent => tag == Tag::Image,
            _ => false,
        };
        if image || typed_image {
            acc.images += 1;
        }
        Ok(())
    }

    /// The reference's `anthropic_source`: `data` is kept until the object ends, because
    /// `type` may come after it.
    fn anthropic_source(&mut self, acc: &mut Acc<'_>) -> Result<(), Bail> {
        let mut tag = Tag::Other;
        let mut media = Media::Other;
        let mut data: Option<(Cow<'b, str>, Option<usize>)> = None;
        if self.open(b'}')? {
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(Bail);
                }
                let key = self.string(true)?;
                let k = K::of(self.text(&key));
                self.eat(b':')?;
                match k {
                    K::Type => tag = self.tag()?,
                    K::MediaType => {
                        media = match self.string_value()? {
                            Some(s) => Media::of(self.text(&s)),
                            None => Media::Other,
                        }
                    }
                    K::Data => {
                        let body = self.s;
                        data = match self.string_value()? {
                            Some(Str::Raw(r)) => {
                                let at = r.start;
                                body.get(r).map(|s| (Cow::Borrowed(s), Some(at)))
                            }
                            Some(Str::Scratch) => Some((Cow::Owned(self.scratch.clone()), None)),
                            None => None,
                        }
                    }
                    K::Content => self.value(Node::AnthropicContent, acc)?,
                    _ => self.skip()?,
                }
                if !self.more(b'}')? {
                    break;
                }
            }
            self.close();
        }
        if let Some((data, at)) = data {
            if tag == Tag::Text {
                acc.text(&data, at);
            } else if media != Media::Image {
                acc.extra(data.len());
            }
        }
        Ok(())
    }

    /// A `type` value: a string names a tag; anything else is skipped and names none.
    fn tag(&mut self) -> Result<Tag, Bail> {
        Ok(match self.string_value()? {
            Some(s) => Tag::of(self.text(&s)),
            None => Tag::Other,
        })
    }

    /// A value where only a string means something: the string, or `None` (skipped).
    fn string_value(&mut self) -> Result<Option<Str>, Bail> {
        self.ws();
        if self.peek() == Some(b'"') {
            self.string(true).map(Some)
        } else {
            self.skip().map(|()| None)
        }
    }

    /// Any value, checked and not looked at.
    fn skip(&mut self) -> Result<(), Bail> {
        self.ws();
        match self.peek() {
            Some(b'"') => self.string(false).map(drop),
            Some(b'{') => {
                if !self.open(b'}')? {
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(Bail);
                    }
                    self.string(false)?;
                    self.eat(b':')?;
                    self.skip()?;
                    if !self.more(b'}')? {
                        break;
                    }
                }
                self.close();
                Ok(())
            }
            Some(b'[') => {
                if !self.open(b']')? {
                    return Ok(());
                }
                loop {
                    self.skip()?;
                    if !self.more(b']')? {
                        break;
                    }
                }
                self.close();
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Bail),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Bail> {
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
    fn number(&mut self) -> Result<(), Bail> {
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
    fn string(&mut self, unescape: bool) -> Result<Str, Bail> {
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
    fn escape(&mut self, j: usize, out: bool) -> Result<usize, Bail> {
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
fn special(b: &[u8], from: usize) -> Result<usize, Bail> {
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
fn specials(w: u64) -> u64 {
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
fn has_control(b: &[u8]) -> bool {
    b.iter().fold(u8::MAX, |low, &c| low.min(c)) < 0x20
}

#[cfg(test)]
mod tests;
