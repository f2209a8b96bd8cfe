//! The prompt of a request body: every piece of text a user sends, for each request format
//! Tollgate proxies, and an upper bound of the tokens the provider will bill for it.
//!
//! Policy (`block_patterns`, `block_secrets`) scans exactly what [`for_each_text`] visits, so
//! this module is where "the prompt" is defined: message contents and their text parts, system
//! prompts, tool call arguments, tool results, tool descriptions, legacy prompts and embedding
//! inputs. Budget reservations use [`prompt_tokens_upper_bound`], which walks the same way.
//!
//! Pure: this module must not import pingora or tokio, nor do I/O. It walks the body once, with
//! a small schema per format (`Node`) saying what each value is. Two walkers share that schema
//! and the counting (`Acc`): [`fast`], a single pass over the bytes of a body already known to
//! be UTF-8, and the reference, serde_json's streaming deserializer (`Walk`). Every entry point
//! runs the fast walk first; it declines whatever the reference might read differently
//! (malformed JSON, deep nesting, numbers past f64, lone surrogates), and the reference then
//! walks the body instead, without passing again the texts the fast walk already passed. In
//! both, strings without escapes are borrowed from the body and escaped ones are unescaped
//! into one reused buffer, so visiting allocates nothing per text.
//!
//! Bodies of an unexpected shape never fail: a field of the wrong type is skipped, and a body
//! that stops parsing half way keeps what was visited before the error. The gateway checks on
//! its own (`request::parse`) that the body is a JSON object with a model; [`scan_body`] hands
//! it the body's top-level members, so a valid body is read only once.

mod fast;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// The request formats whose prompts Tollgate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenAI `/v1/chat/completions`.
    Chat,
    /// OpenAI legacy `/v1/completions`.
    Completions,
    /// OpenAI `/v1/embeddings`.
    Embeddings,
    /// OpenAI `/v1/responses`.
    Responses,
    /// Anthropic `/v1/messages`.
    Messages,
}

/// Tokens a provider adds around each message (role markers, separators). OpenAI's own
/// counting recipe uses 3 per message plus the role's token; the role's bytes are counted as
/// well, so 4 leaves room.
pub const MESSAGE_TOKENS: u64 = 4;

/// Tokens added once per request (OpenAI primes every reply with 3).
pub const REQUEST_TOKENS: u64 = 3;

/// Tokens reserved for each image, whatever its size or detail. Chosen from the providers'
/// published formulas:
/// - OpenAI tile-priced models (gpt-4o class): 85 + 170 per 512px tile after
///   scaling into 2048x2048 with the short side at 768, so at most 2x4 tiles = 1445.
/// - OpenAI patch-priced models: at most 1536 32px patches times a per-model multiplier; the largest
///   published one is 2.46 (gpt-4.1-nano, gpt-5-nano), so at most 3779.
/// - Anthropic: about width*height/750, with images over ~1.15 megapixels scaled down, so
///   about 1600.
///
/// 4000 covers all of these. It does NOT cover gpt-4o-mini, which bills 2833 + 5667 per tile
/// (up to ~48k tokens per high-detail image) at a per-token price low enough that the image
/// costs what it would on gpt-4o: a request with images there can spend more than reserved.
pub const IMAGE_TOKENS: u64 = 4_000;

/// Tokens reserved once when a request defines tools, for the provider's own tool-use
/// instructions: Anthropic documents a tool-use system prompt of 159 to 530 tokens per model
/// (530: Claude 3 Opus with `auto`); OpenAI renders definitions inside a small fixed frame.
pub const TOOLS_TOKENS: u64 = 600;

/// Base64 bytes of input audio per token. An estimate, not a bound: it assumes at most 10
/// tokens per second of audio (OpenAI's Realtime pricing counts user audio at 1 token per
/// 100 ms) and at least
/// 8 kbit/s audio (the lowest mp3 bitrate; wav is far denser), which is 1333 base64 bytes per
/// second, so one token per 133 bytes; 100 leaves a margin.
pub const AUDIO_BASE64_BYTES_PER_TOKEN: u64 = 100;

/// Calls `f` with each text the user sent (unescaped JSON string values), in order. Returns the
/// total text bytes visited.
///
/// Bodies that are not the expected shape: visit what can be found, never fail (the gateway has
/// already validated that the body is a JSON object with a model).
pub fn for_each_text(format: Format, body: &[u8], f: &mut dyn FnMut(&str)) -> usize {
    let mut f = |t: &str, _: Option<usize>| f(t);
    let mut acc = Acc::new(Some(&mut f));
    walk(format, body, &mut acc, &mut |_, _| {});
    acc.text_bytes
}

/// Upper bound of the prompt's tokens, for budget reservations.
///
/// Why it is an upper bound: tokenizers (byte-level BPE, and SentencePiece with byte fallback)
/// consume at least one UTF-8 byte per token, so a text of n bytes is at most n tokens. The
/// bound is the bytes of every visited text, plus the bytes of strings the model reads but
/// policy does not scan (names, roles, tool call ids, encrypted reasoning), plus one token per
/// element of a token-array prompt, plus [`MESSAGE_TOKENS`] per message or input item,
/// [`REQUEST_TOKENS`], [`IMAGE_TOKENS`] per image, and for tool definitions (and response
/// schemas) about their minified JSON size plus [`TOOLS_TOKENS`].
///
/// Where the provider can bill more than this:
/// - input audio: estimated from its base64 size ([`AUDIO_BASE64_BYTES_PER_TOKEN`]), not
///   bounded; an assistant message's `audio.id` reference is not counted at all;
/// - files and PDFs: inline data is counted at its base64 size, which dense PDFs can exceed
///   (each page becomes text plus an image); files by id or URL are not counted;
/// - images on gpt-4o-mini (see [`IMAGE_TOKENS`]);
/// - state held by the provider: Responses `previous_response_id`, `conversation`,
///   `item_reference` items, stored prompt templates; server-side tools (web search, file
///   search) whose results become input tokens.
pub fn prompt_tokens_upper_bound(format: Format, body: &[u8]) -> u64 {
    let mut acc = Acc::new(None);
    walk(format, body, &mut acc, &mut |_, _| {});
    acc.bound()
}

/// What [`scan_body`] found besides the texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// [`prompt_tokens_upper_bound`].
    pub bound: u64,
    /// The body is one valid JSON object (whitespace around it aside), and the member callback
    /// was called once for each of its members, in order. When false, what the member callback
    /// was given is not to be relied on.
    pub whole: bool,
}

/// [`for_each_text`] and [`prompt_tokens_upper_bound`] in one walk of the body, telling more.
/// The gateway needs both for every request, and the walk is most of the cost of either.
/// `f` gets each text and, when the text is the body's own bytes (it had no escapes), its byte
/// offset in `body`, so a caller can relate it to a search made over the whole body; `member`
/// gets the (unescaped) key of each top-level member of the body and the byte range of its
/// value.
pub fn scan_body(
    format: Format,
    body: &[u8],
    f: &mut dyn FnMut(&str, Option<usize>),
    member: &mut dyn FnMut(&str, Range<usize>),
) -> Scanned {
    let mut acc = Acc::new(Some(f));
    let whole = walk(format, body, &mut acc, member);
    Scanned {
        bound: acc.bound(),
        whole,
    }
}

/// The walk: the fast one, else the reference for what the fast one declined. True when the
/// fast walk read the whole body.
fn walk(
    format: Format,
    body: &[u8],
    acc: &mut Acc<'_>,
    member: &mut dyn FnMut(&str, Range<usize>),
) -> bool {
    let node = match format {
        Format::Chat => Node::ChatBody,
        Format::Completions => Node::CompletionsBody,
        Format::Embeddings => Node::EmbeddingsBody,
        Format::Responses => Node::ResponsesBody,
        Format::Messages => Node::MessagesBody,
    };
    let mut passed = 0;
    if let Ok(text) = std::str::from_utf8(body) {
        if fast::walk(node, text, acc, member).is_ok() {
            return true;
        }
        passed = acc.texts;
    }
    // The fast walk is at least as strict as serde_json at every point, so the texts it
    // passed before it declined are the reference walk's first texts: they are counted again
    // (the reference starts from zero) but not passed to `f` twice.
    let mut f = acc.f.take();
    let mut skip = |t: &str, _: Option<usize>| {
        if passed > 0 {
            passed -= 1;
        } else if let Some(f) = f.as_mut() {
            f(t, None);
        }
    };
    let mut reference = Acc::new(Some(&mut skip));
    walk_serde(node, body, &mut reference);
    acc.counts_from(&reference);
    acc.f = f;
    false
}

/// The reference walk, serde_json's.
fn walk_serde(node: Node, body: &[u8], acc: &mut Acc<'_>) {
    let mut de = serde_json::Deserializer::from_slice(body);
    // An error (truncated body, nesting past serde_json's depth limit) ends the walk; what
    // was visited before it stays visited.
    let _ = Walk { node, acc }.deserialize(&mut de);
}

/// The callback a text is passed to: the text, and its offset in the body when it is the
/// body's own bytes.
type TextFn<'f> = &'f mut dyn FnMut(&str, Option<usize>);

/// The callback a top-level member is passed to: its (unescaped) key and its value's range.
type MemberFn<'m> = &'m mut dyn FnMut(&str, Range<usize>);

/// What the walk has seen so far.
struct Acc<'f> {
    f: Option<TextFn<'f>>,
    /// Texts visited.
    texts: usize,
    text_bytes: usize,
    /// Bytes the model reads that policy does not scan.
    extra_bytes: u64,
    /// Tokens counted directly (token-array prompts, audio estimates).
    tokens: u64,
    images: u64,
    messages: u64,
    tools: bool,
}

impl<'f> Acc<'f> {
    fn new(f: Option<TextFn<'f>>) -> Self {
        Acc {
            f,
            texts: 0,
            text_bytes: 0,
            extra_bytes: 0,
            tokens: 0,
            images: 0,
            messages: 0,
            tools: false,
        }
    }

    /// A text; `at` is its offset in the body when it is the body's own bytes.
    fn text(&mut self, s: &str, at: Option<usize>) {
        self.texts += 1;
        self.text_bytes = self.text_bytes.saturating_add(s.len());
        if let Some(f) = self.f.as_mut() {
            f(s, at);
        }
    }

    /// Everything `other` counted, in place of what this one did.
    fn counts_from(&mut self, other: &Acc<'_>) {
        self.texts = other.texts;
        self.text_bytes = other.text_bytes;
        self.extra_bytes = other.extra_bytes;
        self.tokens = other.tokens;
        self.images = other.images;
        self.messages = other.messages;
        self.tools = other.tools;
    }

    fn extra(&mut self, n: usize) {
        self.extra_bytes = self.extra_bytes.saturating_add(n as u64);
    }

    fn bound(&self) -> u64 {
        (self.text_bytes as u64)
            .saturating_add(self.extra_bytes)
            .saturating_add(self.tokens)
            .saturating_add(self.images.saturating_mul(IMAGE_TOKENS))
            .saturating_add(self.messages.saturating_mul(MESSAGE_TOKENS))
            .saturating_add(REQUEST_TOKENS)
            .saturating_add(if self.tools { TOOLS_TOKENS } else { 0 })
    }
}

/// What a JSON value at some place in a body is. Several places share one node where the
/// formats allow the same thing (a content that is a string, an array of parts, or a part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    /// Skipped unread.
    Ignore,
    /// A string the user wrote; anything else is skipped.
    Text,
    /// Strings the model reads but policy does not scan (names, ids, unknown fields).
    Extra,
    /// Inline file data: counted by size, never scanned.
    Blob,
    /// An image: skipped, counted as [`IMAGE_TOKENS`].
    Image,
    /// `input_audio`: its `data` is counted by size.
    Audio,
    AudioData,
    /// Chat `file` part object: its `file_data` is a [`Node::Blob`].
    File,
    /// Legacy prompt or embedding input: a string, an array of strings, or token arrays.
    Prompt,
    /// Arbitrary JSON whose strings are all text (tool_use input, prompt variables);
    /// counted at about its minified size.
    Json,
    /// Tool definitions and response schemas: counted at about their minified size; only
    /// `description` strings are text.
    Schema,
    SchemaDescription,
    ChatBody,
    ChatMessages,
    ChatMessage,
    /// A chat content: a string, an array of parts, or one part.
    ChatContent,
    ToolCalls,
    ToolCall,
    /// `function` / `custom` of a tool call, or a legacy `function_call`.
    Function,
    CompletionsBody,
    EmbeddingsBody,
    ResponsesBody,
    /// Responses `input`: a string or an array of items.
    ResponsesInput,
    ResponsesItem,
    /// A Responses content or output: a string, an array of parts, or one part.
    ResponsesContent,
    MessagesBody,
    AnthropicMessages,
    AnthropicMessage,
    /// An Anthropic content: a string, an array of blocks, or one block.
    AnthropicContent,
    /// An Anthropic block's `source`: an object whose meaning depends on its `type`.
    AnthropicSource,
}

impl Node {
    /// The node of each element when this value is an array.
    fn element(self) -> Node {
        match self {
            Node::Prompt => Node::Prompt,
            Node::Extra => Node::Extra,
            Node::Json => Node::Json,
            Node::Schema | Node::SchemaDescription => Node::Schema,
            Node::ChatMessages => Node::ChatMessage,
            Node::ChatContent => Node::ChatContent,
            Node::ToolCalls => Node::ToolCall,
            Node::ResponsesInput => Node::ResponsesItem,
            Node::ResponsesContent => Node::ResponsesContent,
            Node::AnthropicMessages => Node::AnthropicMessage,
            Node::AnthropicContent => Node::AnthropicContent,
            _ => Node::Ignore,
        }
    }

    /// The node of field `k` when this value is an object.
    fn child(self, k: K) -> Node {
        match self {
            Node::ChatBody => match k {
                K::Messages => Node::ChatMessages,
                K::Tools | K::Functions | K::ResponseFormat | K::ToolChoice => Node::Schema,
                _ => Node::Ignore,
            },
            Node::ChatMessage => match k {
                K::Content => Node::ChatContent,
                K::ToolCalls => Node::ToolCalls,
                K::FunctionCall => Node::Function,
                K::Refusal => Node::Text,
                // A reference to earlier audio: not countable here (documented).
                K::Audio => Node::Ignore,
                _ => Node::Extra,
            },
            Node::ChatContent => match k {
                K::Text | K::Refusal => Node::Text,
                K::ImageUrl => Node::Image,
                K::InputAudio => Node::Audio,
                K::File => Node::File,
                K::Type => Node::Ignore,
                _ => Node::Extra,
            },
            Node::ToolCall => match k {
                K::Function | K::Custom => Node::Function,
                K::Type => Node::Ignore,
                _ => Node::Extra,
            },
            Node::Function => match k {
                K::Arguments | K::Input => Node::Text,
                _ => Node::Extra,
            },
            Node::CompletionsBody => match k {
                K::Prompt => Node::Prompt,
                K::Suffix => Node::Text,
                _ => Node::Ignore,
            },
            Node::EmbeddingsBody => match k {
                K::Input => Node::Prompt,
                _ => Node::Ignore,
            },
            Node::ResponsesBody => match k {
                K::Instructions => Node::Text,
                K::Input => Node::ResponsesInput,
                K::Tools | K::Text | K::ToolChoice => Node::Schema,
                K::Prompt => Node::Json,
                _ => Node::Ignore,
            },
            Node::ResponsesItem => match k {
                K::Content | K::Output | K::Input | K::Summary => Node::ResponsesContent,
                K::Arguments => Node::Text,
                // image_generation_call: the generated image, base64.
                K::Result => Node::Image,
                K::Type | K::Status => Node::Ignore,
                _ => Node::Extra,
            },
            Node::ResponsesContent => match k {
                K::Text | K::Refusal => Node::Text,
                K::ImageUrl => Node::Image,
                K::FileData => Node::Blob,
                K::InputAudio => Node::Audio,
                K::Annotations
                | K::Logprobs
                | K::Detail
                | K::FileId
                | K::FileUrl
                | K::Filename
                | K::Format
                | K::Type => Node::Ignore,
                _ => Node::Extra,
            },
            Node::MessagesBody => match k {
                K::System => Node::AnthropicContent,
                K::Messages => Node::AnthropicMessages,
                K::Tools | K::ToolChoice => Node::Schema,
                _ => Node::Ignore,
            },
            Node::AnthropicMessage => match k {
                K::Content => Node::AnthropicContent,
                _ => Node::Extra,
            },
            Node::AnthropicContent => match k {
                K::Text | K::Thinking | K::Title | K::Context => Node::Text,
                K::Content => Node::AnthropicContent,
                K::Input => Node::Json,
                K::Source => Node::AnthropicSource,
                // Citations in earlier replies are not input tokens.
                K::Type | K::CacheControl | K::Citations | K::IsError => Node::Ignore,
                _ => Node::Extra,
            },
            Node::Audio => match k {
                K::Data => Node::AudioData,
                _ => Node::Ignore,
            },
            Node::File => match k {
                K::FileData => Node::Blob,
                _ => Node::Ignore,
            },
            Node::Extra => Node::Extra,
            Node::Json => Node::Json,
            Node::Schema | Node::SchemaDescription => match k {
                K::Description => Node::SchemaDescription,
                _ => Node::Schema,
            },
            _ => Node::Ignore,
        }
    }

    /// Counted at about their minified JSON size.
    fn structural(self) -> bool {
        matches!(self, Node::Json | Node::Schema | Node::SchemaDescription)
    }

    fn is_body(self) -> bool {
        matches!(
            self,
            Node::ChatBody
                | Node::ResponsesBody
                | Node::MessagesBody
                | Node::CompletionsBody
                | Node::EmbeddingsBody
        )
    }

    /// Objects whose `type` decides something (whether they are an image).
    fn captures_type(self) -> bool {
        matches!(self, Node::ResponsesContent | Node::AnthropicContent)
    }

    fn is_message(self) -> bool {
        matches!(
            self,
            Node::ChatMessage | Node::ResponsesItem | Node::AnthropicMessage
        )
    }

    /// A string value; `at` is its offset in the body when it had no escapes.
    fn string(self, s: &str, at: Option<usize>, acc: &mut Acc<'_>) {
        match self {
            Node::Text
            | Node::Prompt
            | Node::ChatContent
            | Node::ResponsesItem
            | Node::ResponsesContent
            | Node::AnthropicContent => acc.text(s, at),
            // `"input": "..."` is one user message.
            Node::ResponsesInput => {
                acc.text(s, at);
                acc.messages += 1;
            }
            Node::Json | Node::SchemaDescription => {
                acc.text(s, at);
                acc.extra(2);
            }
            Node::Schema => acc.extra(s.len().saturating_add(2)),
            // Anthropic search_result blocks have a string `source`.
            Node::Extra | Node::Blob | Node::AnthropicSource => acc.extra(s.len()),
            Node::AudioData => {
                acc.tokens = acc
                    .tokens
                    .saturating_add(s.len() as u64 / AUDIO_BASE64_BYTES_PER_TOKEN + 1);
            }
            _ => {}
        }
    }

    fn number(self, acc: &mut Acc<'_>) {
        match self {
            // Each element of a token-array prompt is exactly one token.
            Node::Prompt => acc.tokens = acc.tokens.saturating_add(1),
            // The longest shortest form of an f64 is 24 characters.
            n if n.structural() => acc.extra(24),
            _ => {}
        }
    }

    fn scalar(self, acc: &mut Acc<'_>) {
        if self.structural() {
            acc.extra(5);
        }
    }
}

/// The fields any format cares about; everything else is [`K::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum K {
    Annotations,
    Arguments,
    Audio,
    CacheControl,
    Citations,
    Content,
    Context,
    Custom,
    Data,
    Description,
    Detail,
    File,
    FileData,
    FileId,
    FileUrl,
    Filename,
    Format,
    Function,
    FunctionCall,
    Functions,
    ImageUrl,
    Input,
    InputAudio,
    Instructions,
    IsError,
    Logprobs,
    MediaType,
    Messages,
    Output,
    Prompt,
    Refusal,
    ResponseFormat,
    Result,
    Source,
    Status,
    Suffix,
    Summary,
    System,
    Text,
    Thinking,
    Title,
    ToolCalls,
    ToolChoice,
    Tools,
    Type,
    Other,
}

impl K {
    fn of(s: &str) -> K {
        match s {
            "annotations" => K::Annotations,
            "arguments" => K::Arguments,
            "audio" => K::Audio,
            "cache_control" => K::CacheControl,
            "citations" => K::Citations,
            "content" => K::Content,
            "context" => K::Context,
            "custom" => K::Custom,
            "data" => K::Data,
            "description" => K::Description,
            "detail" => K::Detail,
            "file" => K::File,
            "file_data" => K::FileData,
            "file_id" => K::FileId,
            "file_url" => K::FileUrl,
            "filename" => K::Filename,
            "format" => K::Format,
            "function" => K::Function,
            "function_call" => K::FunctionCall,
            "functions" => K::Functions,
            "image_url" => K::ImageUrl,
            "input" => K::Input,
            "input_audio" => K::InputAudio,
            "instructions" => K::Instructions,
            "is_error" => K::IsError,
            "logprobs" => K::Logprobs,
            "media_type" => K::MediaType,
            "messages" => K::Messages,
            "output" => K::Output,
            "prompt" => K::Prompt,
            "refusal" => K::Refusal,
            "response_format" => K::ResponseFormat,
            "result" => K::Result,
            "source" => K::Source,
            "status" => K::Status,
            "suffix" => K::Suffix,
            "summary" => K::Summary,
            "system" => K::System,
            "text" => K::Text,
            "thinking" => K::Thinking,
            "title" => K::Title,
            "tool_calls" => K::ToolCalls,
            "tool_choice" => K::ToolChoice,
            "tools" => K::Tools,
            "type" => K::Type,
            _ => K::Other,
        }
    }
}

/// An object key, and its length for the structural count.
struct Key {
    k: K,
    len: usize,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key {
                    k: K::of(v),
                    len: v.len(),
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The `type` values that decide something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Tag {
    Image,
    InputImage,
    ComputerScreenshot,
    Text,
    #[default]
    Other,
}

impl Tag {
    fn of(v: &str) -> Tag {
        match v {
            "image" => Tag::Image,
            "input_image" => Tag::InputImage,
            "computer_screenshot" => Tag::ComputerScreenshot,
            "text" => Tag::Text,
            _ => Tag::Other,
        }
    }
}

/// Whether a `media_type` is an image's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Media {
    Image,
    #[default]
    Other,
}

impl Media {
    fn of(v: &str) -> Media {
        if v.starts_with("image/") {
            Media::Image
        } else {
            Media::Other
        }
    }
}

/// A string value kept until its object ends, borrowed when it has no escapes.
#[derive(Default)]
struct MaybeStr<'de>(Option<Cow<'de, str>>);

/// Visitors for values where only a string means something: anything else is skipped, so a
/// wrong type never fails the walk.
macro_rules! skip_non_strings {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

impl<'de> de::Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a type")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag, E> {
                Ok(Tag::of(v))
            }
            skip_non_strings!();
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for Media {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Media;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a media type")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Media, E> {
                Ok(Media::of(v))
            }
            skip_non_strings!();
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            skip_non_strings!();
        }
        d.deserialize_any(V)
    }
}

/// The walk at one value: a seed that is its own visitor.
struct Walk<'a, 'f> {
    node: Node,
    acc: &'a mut Acc<'f>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.node {
            Node::Ignore | Node::Image => d.deserialize_ignored_any(IgnoredAny).map(drop),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.node.scalar(self.acc);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.node.number(self.acc);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.node.number(self.acc);
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.node.number(self.acc);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.node.scalar(self.acc);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.node.string(v, None, self.acc);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walk { node, acc } = self;
        let element = node.element();
        let structural = node.structural();
        if structural {
            acc.extra(2);
        }
        while seq
            .next_element_seed(Walk {
                node: element,
                acc: &mut *acc,
            })?
            .is_some()
        {
            if structural {
                acc.extra(1);
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walk { node, acc } = self;
        if node == Node::AnthropicSource {
            return anthropic_source(acc, map);
        }
        let structural = node.structural();
        if structural {
            acc.extra(2);
        }
        let mut tag = Tag::Other;
        let mut image = false;
        while let Some(key) = map.next_key::<Key>()? {
            if structural {
                acc.extra(key.len.saturating_add(4));
            }
            if key.k == K::Type && node.captures_type() {
                tag = map.next_value()?;
                continue;
            }
            if node.is_body() && matches!(key.k, K::Tools | K::Functions) {
                acc.tools = true;
            }
            let child = node.child(key.k);
            image |= child == Node::Image;
            map.next_value_seed(Walk {
                node: child,
                acc: &mut *acc,
            })?;
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
}

/// An Anthropic `source`: `{"type":"text","data":..}` is a plain-text document (text),
/// `{"type":"content","content":[..]}` holds blocks, `{"type":"base64",..}` is an image
/// (counted by its block) or a PDF (counted by size). `type` may come after `data`, so `data`
/// is kept until the object ends.
fn anthropic_source<'de, A: MapAccess<'de>>(acc: &mut Acc<'_>, mut map: A) -> Result<(), A::Error> {
    let mut tag = Tag::Other;
    let mut media = Media::Other;
    let mut data = MaybeStr(None);
    while let Some(key) = map.next_key::<Key>()? {
        match key.k {
            K::Type => tag = map.next_value()?,
            K::MediaType => media = map.next_value()?,
            K::Data => data = map.next_value()?,
            K::Content => map.next_value_seed(Walk {
                node: Node::AnthropicContent,
                acc: &mut *acc,
            })?,
            _ => map.next_value::<IgnoredAny>().map(drop)?,
        }
    }
    if let Some(data) = data.0 {
        if tag == Tag::Text {
            acc.text(&data, None);
        } else if media != Media::Image {
            acc.extra(data.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(format: Format, body: &str) -> Vec<String> {
        let mut out = Vec::new();
        let n = for_each_text(format, body.as_bytes(), &mut |t| out.push(t.to_string()));
        assert_eq!(
            n,
            out.iter().map(String::len).sum::<usize>(),
            "returned bytes = visited bytes"
        );
        out
    }

    fn bound(format: Format, body: &str) -> u64 {
        prompt_tokens_upper_bound(format, body.as_bytes())
    }

    #[test]
    fn chat_visits_string_contents_text_parts_refusals_and_tool_arguments_in_order() {
        let body = r#"{"model":"gpt-4o","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","name":"alice","content":[
                {"type":"text","text":"look at this"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"high"}},
                {"type":"input_audio","input_audio":{"data":"UklGRg==","format":"wav"}},
                {"text":"type after text","type":"text"}]},
            {"role":"assistant","content":[{"type":"refusal","refusal":"part refusal"}]},
            {"role":"assistant","content":null,"refusal":"no","tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"weather\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"sunny"}],
          "tools":[{"type":"function","function":{"name":"lookup","description":"Looks things up",
            "parameters":{"type":"object","properties":{"q":{"type":"string","description":"the query"}}}}}],
          "temperature":0.2}"#;
        assert_eq!(
            texts(Format::Chat, body),
            [
                "be brief",
                "look at this",
                "type after text",
                "part refusal",
                "no",
                "{\"q\":\"weather\"}",
                "sunny",
                "Looks things up",
                "the query"
            ]
        );
    }

    #[test]
    fn chat_skips_names_roles_ids_urls_and_audio_data() {
        let body = r#"{"model":"m","messages":[{"role":"user","name":"SECRETNAME","content":[
            {"type":"image_url","image_url":{"url":"https://example.com/SECRETURL.png"}},
            {"type":"input_audio","input_audio":{"data":"SECRETAUDIO","format":"mp3"}},
            {"type":"file","file":{"file_data":"SECRETFILE","filename":"a.pdf"}}]}]}"#;
        let seen = texts(Format::Chat, body).concat();
        assert!(!seen.contains("SECRET"), "{seen}");
    }

    #[test]
    fn chat_legacy_function_call_and_custom_tool_input_are_visited() {
        let body = r#"{"messages":[{"role":"assistant","function_call":{"name":"f","arguments":"{\"a\":1}"}},
            {"role":"assistant","tool_calls":[{"type":"custom","custom":{"name":"sql","input":"SELECT 1"}}]}]}"#;
        assert_eq!(texts(Format::Chat, body), ["{\"a\":1}", "SELECT 1"]);
    }

    #[test]
    fn escaped_strings_are_unescaped_including_escaped_keys() {
        let body = r#"{"messages":[{"role":"user","content":"caf\u00e9 \"quoted\"\n\ud83d\ude00"},
            {"role":"user","\u0063ontent":"escaped key"}]}"#;
        assert_eq!(
            texts(Format::Chat, body),
            ["café \"quoted\"\n😀", "escaped key"]
        );
    }

    #[test]
    fn completions_visit_prompt_strings_and_suffix_but_not_token_arrays() {
        let body =
            r#"{"model":"m","prompt":["first",[1,2,3],"second"],"suffix":"end","echo":"nope"}"#;
        assert_eq!(texts(Format::Completions, body), ["first", "second", "end"]);
        assert_eq!(texts(Format::Completions, r#"{"prompt":"one"}"#), ["one"]);
        assert!(texts(Format::Completions, r#"{"prompt":[[1,2],[3]]}"#).is_empty());
    }

    #[test]
    fn embeddings_visit_string_and_array_inputs() {
        assert_eq!(texts(Format::Embeddings, r#"{"input":"a b"}"#), ["a b"]);
        assert_eq!(
            texts(
                Format::Embeddings,
                r#"{"input":["x","y",[5,6]],"model":"e"}"#
            ),
            ["x", "y"]
        );
    }

    #[test]
    fn responses_visit_instructions_items_outputs_and_call_arguments() {
        let body = r#"{"model":"o4","instructions":"sys","input":[
            {"role":"user","content":"plain"},
            {"type":"message","role":"user","content":[{"type":"input_text","text":"part"},
                {"type":"input_image","image_url":"data:image/png;base64,SECRETIMG"},
                {"type":"input_file","file_data":"SECRETPDF","filename":"x.pdf"}]},
            {"type":"function_call","call_id":"c1","name":"f","arguments":"{\"x\":2}"},
            {"type":"function_call_output","call_id":"c1","output":"result text"},
            {"type":"reasoning","summary":[{"type":"summary_text","text":"thought"}],"encrypted_content":"SECRETENC"}],
          "tools":[{"type":"function","name":"f","description":"does f","parameters":{}}]}"#;
        let got = texts(Format::Responses, body);
        assert_eq!(
            got,
            [
                "sys",
                "plain",
                "part",
                "{\"x\":2}",
                "result text",
                "thought",
                "does f"
            ]
        );
        assert!(!got.concat().contains("SECRET"));
        assert_eq!(
            texts(Format::Responses, r#"{"input":"just a string"}"#),
            ["just a string"]
        );
    }

    #[test]
    fn messages_visit_system_arrays_blocks_tool_results_and_tool_use_input() {
        let body = r#"{"model":"claude","max_tokens":10,
          "system":[{"type":"text","text":"sys one"},{"type":"text","text":"sys two","cache_control":{"type":"ephemeral"}}],
          "messages":[
            {"role":"user","content":"hello"},
            {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"SECRETSIG"},
                {"type":"tool_use","id":"tu1","name":"get","input":{"city":"Paris","nested":{"list":["a",1]}}}]},
            {"role":"user","content":[
                {"type":"tool_result","tool_use_id":"tu1","content":"plain result"},
                {"type":"tool_result","tool_use_id":"tu2","content":[{"type":"text","text":"block result"},
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"SECRETIMG"}}]},
                {"type":"document","source":{"data":"doc text","type":"text","media_type":"text/plain"},"title":"T"},
                {"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"SECRETPDF"}},
                {"type":"text","text":"tail"}]}]}"#;
        let got = texts(Format::Messages, body);
        assert_eq!(
            got,
            [
                "sys one",
                "sys two",
                "hello",
                "hmm",
                "Paris",
                "a",
                "plain result",
                "block result",
                "doc text",
                "T",
                "tail"
            ]
        );
        assert!(!got.concat().contains("SECRET"));
    }

    #[test]
    fn messages_system_string_is_visited() {
        assert_eq!(
            texts(
                Format::Messages,
                r#"{"system":"be nice","messages":[{"role":"user","content":"hi"}]}"#
            ),
            ["be nice", "hi"]
        );
    }

    #[test]
    fn wrong_types_are_skipped_and_the_rest_still_visited() {
        let body = r#"{"messages":[5,"str",null,{"role":"user","content":{"text":"single part"}},
            {"role":"user","content":[1,true,null,{"type":7,"text":["no"]}]},
            {"role":"user","content":"after"}],"tools":"nope"}"#;
        assert_eq!(texts(Format::Chat, body), ["single part", "after"]);
        let body = r#"{"system":{"type":"text","text":"one block"},"messages":{"not":"an array"}}"#;
        assert_eq!(texts(Format::Messages, body), ["one block"]);
    }

    #[test]
    fn a_truncated_body_keeps_what_was_visited_before_the_error() {
        let body =
            r#"{"messages":[{"role":"user","content":"first"},{"role":"user","content":"sec"#;
        assert_eq!(texts(Format::Chat, body), ["first"]);
    }

    #[test]
    fn duplicate_keys_are_all_visited() {
        let body = r#"{"messages":[{"role":"user","content":"one"}],"messages":[{"role":"user","content":"two"}]}"#;
        assert_eq!(texts(Format::Chat, body), ["one", "two"]);
    }

    #[test]
    fn garbage_and_deep_nesting_never_panic() {
        let deep = "[".repeat(100_000);
        for body in [
            "",
            "null",
            "[]",
            "{",
            "}",
            "\"x\"",
            "{\"messages\":",
            deep.as_str(),
            "\u{0}\u{ff}",
        ] {
            for format in ALL {
                let _ = texts(format, body);
                let _ = bound(format, body);
            }
        }
        let deep_obj = format!("{{\"messages\":[{{\"content\":{}", "[".repeat(10_000));
        let _ = texts(Format::Chat, &deep_obj);
        let deep_input = format!("{{\"messages\":[{{\"role\":\"assistant\",\"content\":[{{\"type\":\"tool_use\",\"input\":{}", "{\"a\":".repeat(10_000));
        let _ = bound(Format::Messages, &deep_input);
    }

    const ALL: [Format; 5] = [
        Format::Chat,
        Format::Completions,
        Format::Embeddings,
        Format::Responses,
        Format::Messages,
    ];

    // Known o200k_base (gpt-4o) token counts.
    const KNOWN: [(&str, u64); 3] = [
        ("Hello, world!", 4),
        ("The quick brown fox jumps over the lazy dog.", 10),
        ("tiktoken is great!", 6),
    ];

    #[test]
    fn the_bound_is_at_least_the_known_token_count_of_sample_prompts() {
        for (text, tokens) in KNOWN {
            let content = serde_json::to_string(text).unwrap_or_default();
            let chat = format!(
                r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":{content}}}]}}"#
            );
            // OpenAI's recipe: 3 per message + role + content, + 3 priming the reply.
            assert!(bound(Format::Chat, &chat) >= tokens + 3 + 1 + 3, "{text}");
            let emb = format!(r#"{{"input":{content}}}"#);
            assert!(bound(Format::Embeddings, &emb) >= tokens, "{text}");
            let legacy = format!(r#"{{"prompt":{content}}}"#);
            assert!(bound(Format::Completions, &legacy) >= tokens, "{text}");
        }
    }

    #[test]
    fn the_bound_is_the_text_bytes_plus_fixed_overheads() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"Hello, world!"}]}"#;
        // 13 text bytes + "user" + one message + the request.
        assert_eq!(
            bound(Format::Chat, body),
            13 + 4 + MESSAGE_TOKENS + REQUEST_TOKENS
        );
    }

    #[test]
    fn each_image_adds_the_image_constant_not_its_size() {
        let one = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}]}]}"#;
        let two = one.replace(
            "]}]}",
            r#",{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#,
        );
        let none = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
        assert_eq!(
            bound(Format::Chat, one) - bound(Format::Chat, none),
            IMAGE_TOKENS
        );
        assert_eq!(
            bound(Format::Chat, &two) - bound(Format::Chat, none),
            2 * IMAGE_TOKENS
        );

        let anth = r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"QUJD"}}]}]}"#;
        let anth_none = r#"{"messages":[{"role":"user","content":[]}]}"#;
        assert_eq!(
            bound(Format::Messages, anth) - bound(Format::Messages, anth_none),
            IMAGE_TOKENS
        );

        let resp =
            r#"{"input":[{"role":"user","content":[{"type":"input_image","file_id":"file-1"}]}]}"#;
        let resp_url = r#"{"input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x"}]}]}"#;
        let resp_none = r#"{"input":[{"role":"user","content":[]}]}"#;
        assert_eq!(
            bound(Format::Responses, resp) - bound(Format::Responses, resp_none),
            IMAGE_TOKENS
        );
        assert_eq!(
            bound(Format::Responses, resp_url) - bound(Format::Responses, resp_none),
            IMAGE_TOKENS
        );
    }

    #[test]
    fn tools_add_their_size_and_the_tools_constant() {
        let without = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"Get the weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;
        let with = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"tools":{tools}}}"#);
        let added = bound(Format::Chat, &with) - bound(Format::Chat, without);
        assert!(
            added >= TOOLS_TOKENS + tools.len() as u64 * 9 / 10,
            "{added}"
        );
        assert!(added <= TOOLS_TOKENS + tools.len() as u64 * 2, "{added}");
    }

    #[test]
    fn token_array_prompts_count_one_token_per_element() {
        let body = r#"{"prompt":[[1,2,3],[4,5]]}"#;
        assert_eq!(bound(Format::Completions, body), 5 + REQUEST_TOKENS);
    }

    #[test]
    fn names_ids_and_encrypted_reasoning_count_toward_the_bound_without_being_scanned() {
        let plain = r#"{"messages":[{"role":"user","content":"x"}]}"#;
        let named = r#"{"messages":[{"role":"user","name":"0123456789","content":"x"}]}"#;
        assert_eq!(bound(Format::Chat, named) - bound(Format::Chat, plain), 10);
        let enc =
            r#"{"input":[{"type":"reasoning","encrypted_content":"0123456789","summary":[]}]}"#;
        let bare = r#"{"input":[{"type":"reasoning","summary":[]}]}"#;
        assert_eq!(
            bound(Format::Responses, enc) - bound(Format::Responses, bare),
            10
        );
    }

    #[test]
    fn audio_is_estimated_from_its_base64_size() {
        let data = "A".repeat(10_000);
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"input_audio","input_audio":{{"data":"{data}","format":"wav"}}}}]}}]}}"#
        );
        let none = r#"{"messages":[{"role":"user","content":[]}]}"#;
        assert_eq!(
            bound(Format::Chat, &body) - bound(Format::Chat, none),
            10_000 / AUDIO_BASE64_BYTES_PER_TOKEN + 1
        );
    }

    #[test]
    fn every_format_bounds_its_visited_text() {
        let bodies = [
            (
                Format::Chat,
                r#"{"messages":[{"role":"user","content":"abc def"}]}"#,
            ),
            (Format::Completions, r#"{"prompt":"abc def","suffix":"x"}"#),
            (Format::Embeddings, r#"{"input":["abc","def"]}"#),
            (
                Format::Responses,
                r#"{"instructions":"i","input":"abc def"}"#,
            ),
            (
                Format::Messages,
                r#"{"system":"s","messages":[{"role":"user","content":"abc def"}]}"#,
            ),
        ];
        for (format, body) in bodies {
            let visited = for_each_text(format, body.as_bytes(), &mut |_| {});
            assert!(visited > 0);
            assert!(
                bound(format, body) >= visited as u64 + REQUEST_TOKENS,
                "{format:?}"
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Format; 5] = [
        Format::Chat,
        Format::Completions,
        Format::Embeddings,
        Format::Responses,
        Format::Messages,
    ];

    /// Arbitrary JSON, biased toward the keys the walk looks at.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let key = prop_oneof![
            Just("messages".to_string()),
            Just("content".to_string()),
            Just("text".to_string()),
            Just("type".to_string()),
            Just("input".to_string()),
            Just("source".to_string()),
            Just("data".to_string()),
            Just("tools".to_string()),
            Just("image_url".to_string()),
            Just("system".to_string()),
            Just("prompt".to_string()),
            "[a-z_]{1,8}",
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            prop_oneof![
                Just("text".to_string()),
                Just("image".to_string()),
                Just("base64".to_string()),
                any::<String>()
            ]
            .prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            for format in ALL {
                let _ = for_each_text(format, &body, &mut |_| {});
                let _ = prompt_tokens_upper_bound(format, &body);
            }
        }

        #[test]
        fn arbitrary_json_never_panics_and_bounds_what_it_visits(v in json()) {
            let body = serde_json::to_vec(&v).unwrap_or_default();
            for format in ALL {
                let mut n = 0;
                let visited = for_each_text(format, &body, &mut |t| n += t.len());
                prop_assert_eq!(visited, n);
                prop_assert!(prompt_tokens_upper_bound(format, &body) >= visited as u64);
            }
        }

        #[test]
        fn one_scan_visits_the_same_texts_and_gives_the_same_bound(v in json()) {
            let body = serde_json::to_vec(&v).unwrap_or_default();
            for format in ALL {
                let mut apart = Vec::new();
                for_each_text(format, &body, &mut |t| apart.push(t.to_string()));
                let mut together = Vec::new();
                let bound = scan_body(format, &body, &mut |t, _| together.push(t.to_string()), &mut |_, _| {}).bound;
                prop_assert_eq!(&apart, &together);
                prop_assert_eq!(bound, prompt_tokens_upper_bound(format, &body));
            }
        }
    }
}
