//! The providers' JSON shapes, read leniently: every field we do not name is skipped by serde
//! without being built, strings are borrowed where the input allows, and a field of an
//! unexpected type reads as "not reported" rather than failing the whole event.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Usage, WireFormat};
use crate::engine::cursor::{Bail, Cursor, Str as CStr};

/// Longest error text kept for logging.
const ERROR_MAX: usize = 1024;

/// Lenient visitors: a value of a type we did not ask for reads as `$out` (draining
/// containers, so the rest of the document still parses) instead of failing the whole event.
macro_rules! other_scalars {
    ($out:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
    };
}

macro_rules! other_str {
    ($out:expr) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($out)
        }
    };
}

macro_rules! other_map {
    ($out:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($out)
        }
    };
}

macro_rules! other_seq {
    ($out:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($out)
        }
    };
}

/// A token count: a non-negative integer (an integral float is accepted too). Anything else,
/// including negative or beyond-`u64` numbers, reads as `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tok(pub Option<u64>);

impl<'de> Deserialize<'de> for Tok {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tok;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tok, E> {
                Ok(Tok(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tok, E> {
                Ok(Tok(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tok, E> {
                // 2^64 is exactly representable as f64; anything at or above it does not fit.
                let fits = v.is_finite()
                    && v >= 0.0
                    && v.fract() == 0.0
                    && v < 18_446_744_073_709_551_616.0;
                Ok(Tok(fits.then_some(v as u64)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tok, E> {
                Ok(Tok(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Tok, E> {
                Ok(Tok(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Tok, E> {
                Ok(Tok(None))
            }
            other_str!(Tok(None));
            other_map!(Tok(None));
            other_seq!(Tok(None));
        }
        d.deserialize_any(V)
    }
}

/// The UTF-8 length of a string value; 0 for any other value. Measures without allocating
/// unless the string has escapes (serde_json then unescapes into its scratch buffer).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TextLen(pub u64);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextLen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("text")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextLen, E> {
                Ok(TextLen(v.len() as u64))
            }
            other_scalars!(TextLen(0));
            other_map!(TextLen(0));
            other_seq!(TextLen(0));
        }
        d.deserialize_any(V)
    }
}

/// A string borrowed from the input where possible; `None` for any other value.
#[derive(Debug, Default)]
pub(crate) struct Str<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Some(Cow::Owned(v.to_owned()))))
            }
            other_scalars!(Str(None));
            other_map!(Str(None));
            other_seq!(Str(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl Str<'_> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

/// Something that carries output text.
pub(crate) trait Text {
    fn text_bytes(&self) -> u64;
}

/// Reads any JSON value as `T` when it is an object, and as `None` otherwise, so that a
/// provider putting `null`, a string or a number where we expect an object costs only that
/// field, not the event.
pub(crate) struct Obj<T>(pub Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Obj(Some(t)))
            }
            other_scalars!(Obj(None));
            other_str!(Obj(None));
            other_seq!(Obj(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Details {
    cached_tokens: Tok,
    reasoning_tokens: Tok,
}

/// Every provider's usage fields in one struct; which ones mean what depends on the format.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct WireUsage {
    // OpenAI chat, completions, embeddings.
    prompt_tokens: Tok,
    completion_tokens: Tok,
    prompt_tokens_details: Obj<Details>,
    completion_tokens_details: Obj<Details>,
    // OpenAI Responses and Anthropic.
    input_tokens: Tok,
    output_tokens: Tok,
    input_tokens_details: Obj<Details>,
    output_tokens_details: Obj<Details>,
    // Anthropic.
    cache_creation_input_tokens: Tok,
    cache_read_input_tokens: Tok,
}

fn detail(d: &Obj<Details>, f: impl Fn(&Details) -> Tok) -> Option<u64> {
    d.0.as_ref().and_then(|d| f(d).0)
}

impl WireUsage {
    /// Maps the provider's fields onto `Usage` (and reasoning tokens, reported apart).
    pub(crate) fn to_usage(&self, format: WireFormat) -> (Usage, Option<u64>) {
        match format {
            WireFormat::OpenAiChat
            | WireFormat::OpenAiCompletions
            | WireFormat::OpenAiEmbeddings => (
                Usage {
                    prompt_tokens: self.prompt_tokens.0,
                    completion_tokens: self.completion_tokens.0,
                    cache_read_tokens: detail(&self.prompt_tokens_details, |d| d.cached_tokens),
                    cache_write_tokens: None,
                },
                detail(&self.completion_tokens_details, |d| d.reasoning_tokens),
            ),
            WireFormat::OpenAiResponses => (
                Usage {
                    prompt_tokens: self.input_tokens.0,
                    completion_tokens: self.output_tokens.0,
                    cache_read_tokens: detail(&self.input_tokens_details, |d| d.cached_tokens),
                    cache_write_tokens: None,
                },
                detail(&self.output_tokens_details, |d| d.reasoning_tokens),
            ),
            WireFormat::AnthropicMessages => (
                Usage {
                    prompt_tokens: self.input_tokens.0,
                    completion_tokens: self.output_tokens.0,
                    cache_read_tokens: self.cache_read_input_tokens.0,
                    cache_write_tokens: self.cache_creation_input_tokens.0,
                },
                None,
            ),
        }
    }
}

/// An error object: OpenAI `{"message","type","code"}`, Anthropic `{"type","message"}`,
/// Responses `{"code","message"}`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct WireError<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow)]
    code: Str<'a>,
    #[serde(borrow)]
    message: Str<'a>,
}

impl WireError<'_> {
    pub(crate) fn describe(&self) -> String {
        let label = self.kind.get().or(self.code.get());
        let s = match (label, self.message.get()) {
            (Some(l), Some(m)) => format!("{l}: {m}"),
            (Some(l), None) => l.to_owned(),
            (None, Some(m)) => m.to_owned(),
            (None, None) => "error".to_owned(),
        };
        truncate(s)
    }
}

pub(crate) fn truncate(mut s: String) -> String {
    if s.len() > ERROR_MAX {
        let mut end = ERROR_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

// ---- OpenAI Responses events ----

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ResponsesEvent<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    pub delta: TextLen,
    #[serde(borrow)]
    pub response: Obj<ResponseBody<'a>>,
    /// The `error` event carries its fields at the top level.
    #[serde(borrow)]
    pub code: Str<'a>,
    #[serde(borrow)]
    pub message: Str<'a>,
    #[serde(borrow)]
    pub error: Obj<WireError<'a>>,
}

impl ResponsesEvent<'_> {
    pub(crate) fn kind(&self) -> &str {
        self.kind.0.as_deref().unwrap_or("")
    }

    pub(crate) fn top_level_error(&self) -> String {
        WireError {
            kind: Str(None),
            code: Str(self.code.0.clone()),
            message: Str(self.message.0.clone()),
        }
        .describe()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ResponseBody<'a> {
    pub usage: Obj<WireUsage>,
    #[serde(borrow)]
    pub error: Obj<WireError<'a>>,
}

// ---- Anthropic Messages events ----

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    pub message: Obj<AnthropicMessage>,
    pub usage: Obj<WireUsage>,
    pub delta: Obj<AnthropicDelta>,
    #[serde(borrow)]
    pub error: Obj<WireError<'a>>,
}

impl AnthropicEvent<'_> {
    pub(crate) fn kind(&self) -> &str {
        self.kind.0.as_deref().unwrap_or("")
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct AnthropicMessage {
    pub usage: Obj<WireUsage>,
}

/// `text_delta`, `input_json_delta` (tool input) and `thinking_delta` are all billed output;
/// `signature_delta` is not text the model wrote.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct AnthropicDelta {
    text: TextLen,
    partial_json: TextLen,
    thinking: TextLen,
}

impl Text for AnthropicDelta {
    fn text_bytes(&self) -> u64 {
        self.text.0 + self.partial_json.0 + self.thinking.0
    }
}

// ---- Reading the stream events without serde ----
//
// A streamed reply is mostly small delta events, and each went through a serde parse of its
// struct (some 3,500 instructions for a 100-byte event); a Responses stream also repeats the
// whole request's `instructions` in `response.completed`. The readers below get the same
// structs from `engine::cursor`, handing serde only the small values that hold usage or an
// error. Whatever they are not sure of (the cursor's rules; a field serde would refuse as
// duplicated; an event that is not an object) is read by serde, exactly as before.

impl<'a> ResponsesEvent<'a> {
    /// The event as serde reads it; `None` when serde refuses it (the event is then skipped).
    pub(crate) fn read(data: &'a [u8]) -> Option<ResponsesEvent<'a>> {
        if let Some(ev) = std::str::from_utf8(data)
            .ok()
            .and_then(|s| fast_responses(s).ok())
        {
            return Some(ev);
        }
        serde_json::from_slice(data).ok()
    }
}

impl<'a> AnthropicEvent<'a> {
    /// The event as serde reads it; `None` when serde refuses it (the event is then skipped).
    pub(crate) fn read(data: &'a [u8]) -> Option<AnthropicEvent<'a>> {
        if let Some(ev) = std::str::from_utf8(data)
            .ok()
            .and_then(|s| fast_anthropic(s).ok())
        {
            return Some(ev);
        }
        serde_json::from_slice(data).ok()
    }
}

/// The members of the object at the cursor (which must be at `{`): `field` names the key
/// (unescaped) of each, and `f` is called with that name and the cursor at the value, which it
/// must consume. A field that comes twice declines, as serde refuses a duplicated field.
fn members<'a>(
    c: &mut Cursor<'a>,
    field: fn(&str) -> Option<u32>,
    mut f: impl FnMut(&mut Cursor<'a>, Option<u32>) -> Result<(), Bail>,
) -> Result<(), Bail> {
    let mut seen = 0u32;
    c.members(true, |c, key| {
        let field = field(c.text(&key));
        if let Some(n) = field {
            if seen & (1 << n) != 0 {
                return Err(Bail);
            }
            seen |= 1 << n;
        }
        f(c, field)
    })
}

/// A whole document that is one object, read by `members`.
fn document<'a>(
    s: &'a str,
    field: fn(&str) -> Option<u32>,
    f: impl FnMut(&mut Cursor<'a>, Option<u32>) -> Result<(), Bail>,
) -> Result<(), Bail> {
    let mut c = Cursor::new(s);
    c.ws();
    if c.peek() != Some(b'{') {
        return Err(Bail);
    }
    members(&mut c, field, f)?;
    if c.at_end() {
        Ok(())
    } else {
        Err(Bail)
    }
}

/// [`Str`]'s reading of the value at the cursor.
fn str_at<'a>(c: &mut Cursor<'a>) -> Result<Str<'a>, Bail> {
    let whole: &'a str = c.s;
    Ok(match c.string_value()? {
        Some(CStr::Raw(r)) => Str(whole.get(r).map(Cow::Borrowed)),
        Some(CStr::Scratch) => Str(Some(Cow::Owned(c.scratch.clone()))),
        None => Str(None),
    })
}

/// [`TextLen`]'s reading of the value at the cursor.
fn text_len_at(c: &mut Cursor<'_>) -> Result<TextLen, Bail> {
    Ok(TextLen(match c.string_value()? {
        Some(s) => c.text(&s).len() as u64,
        None => 0,
    }))
}

/// [`Obj`]'s reading of the value at the cursor, the object itself read by `read`.
fn obj_at<'a, T>(
    c: &mut Cursor<'a>,
    read: impl FnOnce(&mut Cursor<'a>) -> Result<T, Bail>,
) -> Result<Obj<T>, Bail> {
    c.ws();
    if c.peek() == Some(b'{') {
        read(c).map(|t| Obj(Some(t)))
    } else {
        c.skip().map(|()| Obj(None))
    }
}

/// The value at the cursor read by serde on its own (a small one: a usage or an error object).
/// A value serde refuses declines: in the whole event it would fail the event.
fn serde_at<'a, T: Deserialize<'a>>(c: &mut Cursor<'a>) -> Result<T, Bail> {
    let whole: &'a str = c.s;
    c.ws();
    let start = c.i;
    c.skip()?;
    let value = whole.get(start..c.i).ok_or(Bail)?;
    serde_json::from_str(value).map_err(|_| Bail)
}

impl WireUsage {
    /// A captured `usage` value as serde reads it (`Option<WireUsage>`: `null` is `None`);
    /// `Err` where serde refuses it. The cursor reads the common shape (an object of token
    /// counts that are plain integers or `null`, and `*_details` objects of the same), serde
    /// everything else.
    pub(crate) fn read(value: &[u8]) -> Result<Option<WireUsage>, ()> {
        if let Some(u) = std::str::from_utf8(value).ok().and_then(|s| {
            let mut c = Cursor::new(s);
            let u = fast_usage(&mut c).ok()?;
            c.at_end().then_some(u.0)
        }) {
            return Ok(u);
        }
        serde_json::from_slice::<Option<WireUsage>>(value).map_err(drop)
    }
}

/// [`Obj<WireUsage>`]'s reading of the value at the cursor: the cursor's when it can, serde's
/// (of the same bytes) when it declines.
fn usage_at(c: &mut Cursor<'_>) -> Result<Obj<WireUsage>, Bail> {
    c.ws();
    let mark = c.mark();
    match fast_usage(c) {
        Ok(u) => Ok(u),
        Err(Bail) => {
            c.back_to(mark);
            serde_at(c)
        }
    }
}

/// A usage object whose counts are plain integers or `null` (declines anything else, for
/// serde to read: a float, a negative number, a string, a count past `u64`).
fn fast_usage(c: &mut Cursor<'_>) -> Result<Obj<WireUsage>, Bail> {
    c.ws();
    match c.peek() {
        Some(b'{') => {}
        Some(b'n') => return c.literal(b"null").map(|()| Obj(None)),
        _ => return Err(Bail),
    }
    let mut u = WireUsage::default();
    let names = |k: &str| match k {
        "prompt_tokens" => Some(0),
        "completion_tokens" => Some(1),
        "prompt_tokens_details" => Some(2),
        "completion_tokens_details" => Some(3),
        "input_tokens" => Some(4),
        "output_tokens" => Some(5),
        "input_tokens_details" => Some(6),
        "output_tokens_details" => Some(7),
        "cache_creation_input_tokens" => Some(8),
        "cache_read_input_tokens" => Some(9),
        _ => None,
    };
    members(c, names, |c, field| {
        match field {
            Some(0) => u.prompt_tokens = tok_at(c)?,
            Some(1) => u.completion_tokens = tok_at(c)?,
            Some(2) => u.prompt_tokens_details = details_at(c)?,
            Some(3) => u.completion_tokens_details = details_at(c)?,
            Some(4) => u.input_tokens = tok_at(c)?,
            Some(5) => u.output_tokens = tok_at(c)?,
            Some(6) => u.input_tokens_details = details_at(c)?,
            Some(7) => u.output_tokens_details = details_at(c)?,
            Some(8) => u.cache_creation_input_tokens = tok_at(c)?,
            Some(9) => u.cache_read_input_tokens = tok_at(c)?,
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(Obj(Some(u)))
}

fn details_at(c: &mut Cursor<'_>) -> Result<Obj<Details>, Bail> {
    c.ws();
    match c.peek() {
        Some(b'{') => {}
        Some(b'n') => return c.literal(b"null").map(|()| Obj(None)),
        _ => return Err(Bail),
    }
    let mut d = Details::default();
    let names = |k: &str| match k {
        "cached_tokens" => Some(0),
        "reasoning_tokens" => Some(1),
        _ => None,
    };
    members(c, names, |c, field| {
        match field {
            Some(0) => d.cached_tokens = tok_at(c)?,
            Some(1) => d.reasoning_tokens = tok_at(c)?,
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(Obj(Some(d)))
}

/// [`Tok`]'s reading of a plain integer or `null`; declines any other value.
fn tok_at(c: &mut Cursor<'_>) -> Result<Tok, Bail> {
    c.ws();
    match c.peek() {
        Some(b'0'..=b'9') => {
            let start = c.i;
            c.number()?;
            let lit = c.b.get(start..c.i).ok_or(Bail)?;
            if !lit.iter().all(u8::is_ascii_digit) {
                return Err(Bail);
            }
            let mut v = 0u64;
            for &d in lit {
                v = v
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(d - b'0')))
                    .ok_or(Bail)?;
            }
            Ok(Tok(Some(v)))
        }
        Some(b'n') => c.literal(b"null").map(|()| Tok(None)),
        _ => Err(Bail),
    }
}

fn fast_responses(s: &str) -> Result<ResponsesEvent<'_>, Bail> {
    let mut ev = ResponsesEvent::default();
    document(
        s,
        |k| match k {
            "type" => Some(0),
            "delta" => Some(1),
            "response" => Some(2),
            "code" => Some(3),
            "message" => Some(4),
            "error" => Some(5),
            _ => None,
        },
        |c, field| {
            match field {
                Some(0) => ev.kind = str_at(c)?,
                Some(1) => ev.delta = text_len_at(c)?,
                Some(2) => {
                    ev.response = obj_at(c, |c| {
                        let mut body = ResponseBody::default();
                        let names = |k: &str| match k {
                            "usage" => Some(0),
                            "error" => Some(1),
                            _ => None,
                        };
                        members(c, names, |c, field| {
                            match field {
                                Some(0) => body.usage = usage_at(c)?,
                                Some(1) => body.error = serde_at(c)?,
                                _ => c.skip()?,
                            }
                            Ok(())
                        })?;
                        Ok(body)
                    })?
                }
                Some(3) => ev.code = str_at(c)?,
                Some(4) => ev.message = str_at(c)?,
                Some(5) => ev.error = serde_at(c)?,
                _ => c.skip()?,
            }
            Ok(())
        },
    )?;
    Ok(ev)
}

fn fast_anthropic(s: &str) -> Result<AnthropicEvent<'_>, Bail> {
    let mut ev = AnthropicEvent::default();
    document(
        s,
        |k| match k {
            "type" => Some(0),
            "message" => Some(1),
            "usage" => Some(2),
            "delta" => Some(3),
            "error" => Some(4),
            _ => None,
        },
        |c, field| {
            match field {
                Some(0) => ev.kind = str_at(c)?,
                Some(1) => {
                    ev.message = obj_at(c, |c| {
                        let mut m = AnthropicMessage::default();
                        let names = |k: &str| (k == "usage").then_some(0);
                        members(c, names, |c, field| {
                            match field {
                                Some(0) => m.usage = usage_at(c)?,
                                _ => c.skip()?,
                            }
                            Ok(())
                        })?;
                        Ok(m)
                    })?
                }
                Some(2) => ev.usage = usage_at(c)?,
                Some(3) => {
                    ev.delta = obj_at(c, |c| {
                        let mut d = AnthropicDelta::default();
                        let names = |k: &str| match k {
                            "text" => Some(0),
                            "partial_json" => Some(1),
                            "thinking" => Some(2),
                            _ => None,
                        };
                        members(c, names, |c, field| {
                            match field {
                                Some(0) => d.text = text_len_at(c)?,
                                Some(1) => d.partial_json = text_len_at(c)?,
                                Some(2) => d.thinking = text_len_at(c)?,
                                _ => c.skip()?,
                            }
                            Ok(())
                        })?;
                        Ok(d)
                    })?
                }
                Some(4) => ev.error = serde_at(c)?,
                _ => c.skip()?,
            }
            Ok(())
        },
    )?;
    Ok(ev)
}

#[cfg(test)]
mod fast_tests {
    //! The cursor readers against serde: the same event, field by field, for every event; and
    //! the common events read without serde.

    use super::*;
    use proptest::prelude::*;

    fn usage(u: &Obj<WireUsage>) -> Option<Vec<(Usage, Option<u64>)>> {
        u.0.as_ref().map(|u| {
            [
                WireFormat::OpenAiChat,
                WireFormat::OpenAiResponses,
                WireFormat::AnthropicMessages,
            ]
            .into_iter()
            .map(|f| u.to_usage(f))
            .collect()
        })
    }

    fn error(e: &Obj<WireError>) -> Option<String> {
        e.0.as_ref().map(WireError::describe)
    }

    fn responses(ev: Option<ResponsesEvent>) -> String {
        match ev {
            None => "refused".into(),
            Some(ev) => format!(
                "{:?} {} {:?} {:?} {:?} {:?}",
                ev.kind.0,
                ev.delta.0,
                ev.response
                    .0
                    .as_ref()
                    .map(|r| (usage(&r.usage), error(&r.error))),
                ev.code.0,
                ev.message.0,
                error(&ev.error),
            ),
        }
    }

    fn anthropic(ev: Option<AnthropicEvent>) -> String {
        match ev {
            None => "refused".into(),
            Some(ev) => format!(
                "{:?} {:?} {:?} {:?} {:?}",
                ev.kind.0,
                ev.message.0.as_ref().map(|m| usage(&m.usage)),
                usage(&ev.usage),
                ev.delta
                    .0
                    .as_ref()
                    .map(|d| (d.text.0, d.partial_json.0, d.thinking.0)),
                error(&ev.error),
            ),
        }
    }

    /// `read` gives what serde gives.
    fn assert_same(data: &str) {
        let b = data.as_bytes();
        assert_eq!(
            responses(ResponsesEvent::read(b)),
            responses(serde_json::from_slice(b).ok()),
            "responses: {data}"
        );
        assert_eq!(
            anthropic(AnthropicEvent::read(b)),
            anthropic(serde_json::from_slice(b).ok()),
            "anthropic: {data}"
        );
    }

    const COMMON_RESPONSES: &[&str] = &[
        r#"{"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello","logprobs":[]}"#,
        r#"{"type":"response.output_text.delta","sequence_number":6,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"line\nnext \"q\" \u00e9\ud83d\ude00","logprobs":[]}"#,
        r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"{\"cmd\":"}"#,
        r#"{"type":"response.completed","sequence_number":24,"response":{"id":"resp_1","object":"response","status":"completed","error":null,"instructions":"You are Codex. \n Be brief.","output":[{"type":"message","content":[{"type":"output_text","text":"hi","annotations":[]}]}],"tools":[],"temperature":1.0,"usage":{"input_tokens":9000,"input_tokens_details":{"cached_tokens":4096},"output_tokens":16,"output_tokens_details":{"reasoning_tokens":8},"total_tokens":9016},"metadata":{}}}"#,
        r#"{"type":"response.failed","sequence_number":3,"response":{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"The model failed."},"usage":{"input_tokens":10,"output_tokens":0}}}"#,
        r#"{"type":"error","sequence_number":2,"code":"rate_limit_exceeded","message":"Slow down","param":null}"#,
        r#"  {"type":"response.incomplete","response":{"usage":null,"incomplete_details":{"reason":"max_output_tokens"}}}  "#,
    ];

    const COMMON_ANTHROPIC: &[&str] = &[
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1,"service_tier":"standard"}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\tb\\c \u4e2d"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"path\": \"src"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":16}}"#,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ];

    #[test]
    fn common_events_are_read_without_serde_and_as_serde_reads_them() {
        for data in COMMON_RESPONSES {
            assert!(fast_responses(data).is_ok(), "{data}");
            assert_same(data);
        }
        for data in COMMON_ANTHROPIC {
            assert!(fast_anthropic(data).is_ok(), "{data}");
            assert_same(data);
        }
    }

    #[test]
    fn unusual_events_are_read_as_serde_reads_them() {
        for data in [
            // serde refuses a duplicated field: the event is skipped.
            r#"{"type":"a","type":"b"}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":1},"usage":{"input_tokens":2}}}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":1,"output_tokens":2}}"#,
            r#"{"type":"content_block_delta","delta":{"text":"a","text":"b"}}"#,
            // Lenient types.
            r#"{"type":7,"delta":{"x":1},"response":"none","error":[1],"message":{"type":"x"}}"#,
            r#"{"type":null,"delta":null,"response":null,"usage":[],"message":5}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":-1,"output_tokens":2.0,"input_tokens_details":7}}}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":1e3}}"#,
            // Escaped keys are the same keys.
            r#"{"typ\u0065":"response.output_text.delta","d\u0065lta":"x"}"#,
            // What the cursor declines.
            r#"{"type":"a","pad":1e999}"#,
            r#"{"type":"a","pad":"\ud800"}"#,
            r#"{"type":"\ud800"}"#,
            r#"{"type":"a"} trailing"#,
            r#"{"type":"a",}"#,
            r#"["type","a"]"#,
            r#""just a string""#,
            r#"{"type":"content_block_delta","delta":{"text":"unterminated"#,
            "",
        ] {
            assert_same(data);
        }
        let deep = format!(
            r#"{{"type":"a","pad":{}1{}}}"#,
            "[".repeat(150),
            "]".repeat(150)
        );
        assert_same(&deep);
        let mut bytes = br#"{"type":"content_block_delta","delta":{"text":"caf"#.to_vec();
        bytes.extend_from_slice(b"\xe9\"}}");
        assert_eq!(
            anthropic(AnthropicEvent::read(&bytes)),
            anthropic(serde_json::from_slice(&bytes).ok())
        );
    }

    fn fragment() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("type"),
            Just("delta"),
            Just("response"),
            Just("usage"),
            Just("message"),
            Just("error"),
            Just("code"),
            Just("text"),
            Just("partial_json"),
            Just("thinking"),
            Just("input_tokens"),
            Just("output_tokens"),
            Just("input_tokens_details"),
            Just("cached_tokens"),
            Just("other"),
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("7".to_string()),
            Just("-3".to_string()),
            Just("2.5".to_string()),
            Just("1e400".to_string()),
            Just(r#""content_block_delta""#.to_string()),
            Just(r#""response.output_text.delta""#.to_string()),
            Just(r#""a\nb""#.to_string()),
            Just(r#""\ud83d\ude00""#.to_string()),
            Just(r#""\udc00""#.to_string()),
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        ];
        leaf.prop_recursive(3, 24, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|kv| {
                    let members: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!(r#""{k}":{v}"#))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_event_is_read_as_serde_reads_it(data in fragment(), cut in any::<prop::sample::Index>(), damage in any::<bool>()) {
            let data = if damage {
                let mut end = cut.index(data.len() + 1);
                while !data.is_char_boundary(end) {
                    end -= 1;
                }
                data[..end].to_string()
            } else {
                data
            };
            assert_same(&data);
        }
    }
}
