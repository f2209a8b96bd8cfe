//! The providers' JSON shapes, read leniently: every field we do not name is skipped by serde
//! without being built, strings are borrowed where the input allows, and a field of an
//! unexpected type reads as "not reported" rather than failing the whole event.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Usage, WireFormat};

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
