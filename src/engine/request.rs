//! The few request fields Tollgate acts on, and the byte-level body rewrites it makes.
//!
//! Reading: `serde_json` deserialises into a small struct of borrowed fields, skipping every
//! other value without building a tree. Rewriting: a top-level member scanner finds the byte
//! ranges of `model` and `stream_options` and splices new bytes in, so every other byte of the
//! client's body (unknown fields, key order, number formatting) reaches the provider exactly as
//! sent.
//!
//! Core module: no pingora, no tokio, no I/O.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;

use crate::engine::error::{json_string, GatewayError};
use crate::engine::provider::Endpoint;

/// What the gateway needs to know about a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: String,
    pub stream: bool,
    /// The output cap the client asked for (`max_tokens`, `max_completion_tokens` or
    /// `max_output_tokens`); the largest if several are given.
    pub max_output_tokens: Option<u64>,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: Option<bool>,
    /// The end user the body names: OpenAI's `user`, else Anthropic's `metadata.user_id`
    /// (a value that is not a string is ignored, as the provider would refuse it anyway).
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default, deserialize_with = "string_or_ignore")]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default, deserialize_with = "string_or_ignore")]
    user_id: Option<Cow<'a, str>>,
}

/// A string, or `None` for any other JSON value (skipped without building it).
fn string_or_ignore<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            while a
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Parse and check the fields Tollgate needs; every failure is a 400 naming the problem.
pub fn parse(body: &[u8]) -> Result<RequestFacts, GatewayError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(GatewayError::InvalidRequest(if body.is_empty() {
            "The request body is empty; expected a JSON object".into()
        } else {
            "The request body must be a JSON object".into()
        }));
    }
    let peek: Peek = serde_json::from_slice(body)
        .map_err(|e| GatewayError::InvalidRequest(format!("The request body is not valid: {e}")))?;
    facts_of(peek)
}

fn facts_of(peek: Peek<'_>) -> Result<RequestFacts, GatewayError> {
    let model = match peek.model {
        Some(m) if !m.trim().is_empty() => m.into_owned(),
        Some(_) => {
            return Err(GatewayError::InvalidRequest(
                "`model` must not be empty".into(),
            ))
        }
        None => return Err(GatewayError::InvalidRequest("`model` is required".into())),
    };
    let max_output_tokens = [
        peek.max_tokens,
        peek.max_completion_tokens,
        peek.max_output_tokens,
    ]
    .into_iter()
    .flatten()
    .max();
    Ok(RequestFacts {
        model,
        stream: peek.stream.unwrap_or(false),
        max_output_tokens,
        include_usage: peek.stream_options.and_then(|s| s.include_usage),
        user: peek
            .user
            .or(peek.metadata.and_then(|m| m.user_id))
            .map(Cow::into_owned),
    })
}

/// The top-level members [`parse`] reads, as a full walk of a valid body found them
/// (`prompt::scan_body`), so that a body the prompt walk has read is not parsed a second time.
#[derive(Clone, Debug, Default)]
pub struct Members {
    model: Slot,
    stream: Slot,
    max_tokens: Slot,
    max_completion_tokens: Slot,
    max_output_tokens: Slot,
    stream_options: Slot,
    user: Slot,
    metadata: Slot,
}

/// Where a member's value is.
#[derive(Clone, Debug, Default)]
enum Slot {
    #[default]
    Absent,
    At(Range<usize>),
    /// The key came twice (serde refuses that for the fields it knows).
    Twice,
}

impl Members {
    /// One top-level member: its (unescaped) key and its value's range in the body.
    pub fn see(&mut self, key: &str, value: Range<usize>) {
        let slot = match key {
            "model" => &mut self.model,
            "stream" => &mut self.stream,
            "max_tokens" => &mut self.max_tokens,
            "max_completion_tokens" => &mut self.max_completion_tokens,
            "max_output_tokens" => &mut self.max_output_tokens,
            "stream_options" => &mut self.stream_options,
            "user" => &mut self.user,
            "metadata" => &mut self.metadata,
            _ => return,
        };
        *slot = match slot {
            Slot::Absent => Slot::At(value),
            _ => Slot::Twice,
        };
    }

    /// What [`parse`] gives for the valid JSON object `body` whose top-level members these
    /// are, when every field it reads is in its plain form (a string without escapes, `true`,
    /// a plain integer, `null`, a small object of those). `None` for anything else (an escape,
    /// a duplicate, a value of another type, a missing or empty model): [`parse`] then decides,
    /// with its error when there is one. The fast case reads a few bytes per field.
    pub fn facts(&self, body: &[u8]) -> Option<RequestFacts> {
        let value = |slot: &Slot| -> Option<Option<&[u8]>> {
            match slot {
                Slot::Absent => Some(None),
                Slot::At(r) => body.get(r.clone()).map(|v| (v != b"null").then_some(v)),
                Slot::Twice => None,
            }
        };
        let model = match value(&self.model)? {
            Some(v) => Some(Cow::Borrowed(plain_str(v)?)),
            None => None,
        };
        let flag = |slot: &Slot| -> Option<Option<bool>> {
            match value(slot)? {
                None => Some(None),
                Some(b"true") => Some(Some(true)),
                Some(b"false") => Some(Some(false)),
                Some(_) => None,
            }
        };
        let count = |slot: &Slot| -> Option<Option<u64>> {
            match value(slot)? {
                None => Some(None),
                Some(v) if v.first().is_some_and(u8::is_ascii_digit) => {
                    std::str::from_utf8(v).ok()?.parse().ok().map(Some)
                }
                Some(_) => None,
            }
        };
        let stream_options = match value(&self.stream_options)? {
            None => None,
            Some(v) => {
                let mut include_usage = Slot::Absent;
                each_plain_member(body, self.stream_options.start()?, v, |key, r| {
                    if key == b"include_usage" {
                        include_usage.see_again(r);
                    }
                })?;
                Some(StreamOptions {
                    include_usage: flag(&include_usage)?,
                })
            }
        };
        let metadata = match value(&self.metadata)? {
            None => None,
            Some(v) => {
                let mut user_id = Slot::Absent;
                each_plain_member(body, self.metadata.start()?, v, |key, r| {
                    if key == b"user_id" {
                        user_id.see_again(r);
                    }
                })?;
                Some(Metadata {
                    user_id: string_or_none(value(&user_id)?)?,
                })
            }
        };
        let peek = Peek {
            model,
            stream: flag(&self.stream)?,
            max_tokens: count(&self.max_tokens)?,
            max_completion_tokens: count(&self.max_completion_tokens)?,
            max_output_tokens: count(&self.max_output_tokens)?,
            stream_options,
            user: string_or_none(value(&self.user)?)?,
            metadata,
        };
        facts_of(peek).ok()
    }
}

impl Slot {
    fn start(&self) -> Option<usize> {
        match self {
            Slot::At(r) => Some(r.start),
            _ => None,
        }
    }

    fn see_again(&mut self, value: Range<usize>) {
        *self = match self {
            Slot::Absent => Slot::At(value),
            _ => Slot::Twice,
        };
    }
}

/// The text of a JSON string value without escapes; `None` for anything else.
fn plain_str(v: &[u8]) -> Option<&str> {
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// `string_or_ignore`'s reading of a value: a plain string, or nothing for a value that is not
/// a string; `None` (not sure) for a string with escapes.
fn string_or_none(v: Option<&[u8]>) -> Option<Option<Cow<'_, str>>> {
    match v {
        Some(v) if v.first() == Some(&b'"') => plain_str(v).map(|s| Some(Cow::Borrowed(s))),
        _ => Some(None),
    }
}

/// Calls `f` with each member of the object `v` (at `start` in `body`); `None` when `v` is not
/// an object or a key has an escape (its unescaped form is not at hand).
fn each_plain_member(
    body: &[u8],
    start: usize,
    v: &[u8],
    mut f: impl FnMut(&[u8], Range<usize>),
) -> Option<()> {
    if v.first() != Some(&b'{') {
        return None;
    }
    let (members, _) = object_members(body, start)?;
    for m in members {
        let key = body.get(m.key.clone())?;
        if key.contains(&b'\\') {
            return None;
        }
        f(key, m.value);
    }
    Some(())
}

/// One `"key": value` member of a JSON object, as byte ranges of the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The key's raw bytes between the quotes.
    pub key: Range<usize>,
    pub value: Range<usize>,
}

/// The members of the object starting at `start` (which must be `{`), for a body that is
/// already known to be valid JSON. Returns `None` on anything unexpected rather than guessing.
pub fn object_members(body: &[u8], start: usize) -> Option<(Vec<Member>, usize)> {
    let mut i = start;
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        i = skip_ws(body, i);
        match body.get(i)? {
            b'}' => return Some((out, i + 1)),
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {
                let key_end = string_end(body, i)?;
                let key = i + 1..key_end - 1;
                i = skip_ws(body, key_end);
                if body.get(i) != Some(&b':') {
                    return None;
                }
                let vstart = skip_ws(body, i + 1);
                let vend = value_end(body, vstart)?;
                out.push(Member {
                    key,
                    value: vstart..vend,
                });
                i = vend;
            }
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// `i` is at an opening quote; returns the index just past the closing quote.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

fn find<'m>(body: &[u8], members: &'m [Member], key: &str) -> Option<&'m Member> {
    members
        .iter()
        .find(|m| &body[m.key.clone()] == key.as_bytes())
}

/// What to change in a body before it goes upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite<'a> {
    /// Replace the `model` value (prefix stripping).
    pub model: Option<&'a str>,
    /// Make sure `stream_options.include_usage` is `true`.
    pub include_usage: bool,
    /// Add this output cap under this field name (the request has none).
    pub max_tokens: Option<(&'static str, u64)>,
}

/// The body with `rw` applied, or `None` when nothing needs to change (the original bytes are
/// forwarded as they are).
pub fn rewrite(body: &[u8], rw: &Rewrite) -> Option<Vec<u8>> {
    if rw.model.is_none() && !rw.include_usage && rw.max_tokens.is_none() {
        return None;
    }
    let start = skip_ws(body, 0);
    let (members, _) = object_members(body, start)?;
    // (range to replace, replacement); applied back to front so ranges stay valid.
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    if let Some(m) = rw.model {
        let member = find(body, &members, "model")?;
        edits.push((member.value.clone(), json_string(m)));
    }
    if rw.include_usage {
        match find(body, &members, "stream_options") {
            None => edits.push((
                start + 1..start + 1,
                r#""stream_options":{"include_usage":true},"#.into(),
            )),
            Some(so) if body.get(so.value.start) == Some(&b'{') => {
                let (inner, _) = object_members(body, so.value.start)?;
                match find(body, &inner, "include_usage") {
                    Some(iu) => edits.push((iu.value.clone(), "true".into())),
                    None => {
                        let at = so.value.start + 1;
                        let sep = if inner.is_empty() { "" } else { "," };
                        edits.push((at..at, format!(r#""include_usage":true{sep}"#)));
                    }
                }
            }
            // `null`: replace it with the object we need.
            Some(so) => edits.push((so.value.clone(), r#"{"include_usage":true}"#.into())),
        }
    }
    if let Some((field, n)) = rw.max_tokens {
        edits.push((start + 1..start + 1, format!(r#""{field}":{n},"#)));
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = body.to_vec();
    for (r, s) in edits {
        out.splice(r, s.into_bytes());
    }
    Some(out)
}

/// Whether a streaming request to this endpoint should have usage injected, and whether the
/// usage chunk must then be removed from what the client receives.
pub fn usage_injection(endpoint: Endpoint, facts: &RequestFacts) -> (bool, bool) {
    if !(facts.stream && endpoint.supports_stream_options()) {
        return (false, false);
    }
    let client_asked = facts.include_usage == Some(true);
    (!client_asked, !client_asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn extracts_only_the_needed_fields() {
        let f = parse(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"max_completion_tokens":50,"stream_options":{"include_usage":false}}"#).unwrap();
        assert_eq!(f.model, "gpt-4o");
        assert!(f.stream);
        assert_eq!(f.max_output_tokens, Some(50));
        assert_eq!(f.include_usage, Some(false));
    }

    #[test]
    fn bad_bodies_are_400_with_a_reason() {
        for (body, needle) in [
            (&b""[..], "empty"),
            (b"not json", "JSON object"),
            (b"[1,2]", "JSON object"),
            (br#"{"messages":[]}"#, "`model` is required"),
            (br#"{"model":""}"#, "must not be empty"),
            (br#"{"model":42}"#, "not valid"),
            (br#"{"model":"m","max_tokens":-1}"#, "not valid"),
            (br#"{"model":"m","stream":"yes"}"#, "not valid"),
            (br#"{"model":"m""#, "not valid"),
            (br#"{"model":"a","model":"b"}"#, "not valid"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(
                e.message().contains(needle),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                e.message()
            );
        }
    }

    #[test]
    fn null_optional_fields_are_treated_as_absent() {
        let f = parse(br#"{"model":"m","max_tokens":null,"stream":null,"stream_options":null}"#)
            .unwrap();
        assert_eq!(
            (f.stream, f.max_output_tokens, f.include_usage),
            (false, None, None)
        );
    }

    #[test]
    fn model_rewrite_changes_only_the_model_bytes() {
        let body = br#"{ "model" : "openai/gpt-4o", "x_unknown": {"a":[1,2.50,"}"]}, "n": 1e3 }"#;
        let out = rewrite(
            body,
            &Rewrite {
                model: Some("gpt-4o"),
                include_usage: false,
                max_tokens: None,
            },
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{ "model" : "gpt-4o", "x_unknown": {"a":[1,2.50,"}"]}, "n": 1e3 }"#
        );
    }

    #[test]
    fn include_usage_is_added_in_every_starting_state() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"model":"m","stream":true}"#, "absent"),
            (
                br#"{"model":"m","stream":true,"stream_options":null}"#,
                "null",
            ),
            (
                br#"{"model":"m","stream":true,"stream_options":{}}"#,
                "empty",
            ),
            (
                br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#,
                "other",
            ),
            (
                br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
                "false",
            ),
        ];
        for (body, what) in cases {
            let out = rewrite(
                body,
                &Rewrite {
                    model: None,
                    include_usage: true,
                    max_tokens: None,
                },
            )
            .unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(v["stream_options"]["include_usage"], true, "{what}");
            assert_eq!(v["model"], "m", "{what}");
        }
        let out = rewrite(
            br#"{"model":"m","stream_options":{"include_obfuscation":false}}"#,
            &Rewrite {
                model: None,
                include_usage: true,
                max_tokens: None,
            },
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"]["include_obfuscation"], false,
            "other options survive"
        );
    }

    #[test]
    fn both_rewrites_together_stay_valid() {
        let body = br#"{"stream":true,"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"\"model\": x"}]}"#;
        let out = rewrite(
            body,
            &Rewrite {
                model: Some("gpt-4o-mini"),
                include_usage: true,
                max_tokens: Some(("max_completion_tokens", 7)),
            },
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["messages"][0]["content"], "\"model\": x");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_completion_tokens"], 7);
    }

    #[test]
    fn nothing_to_do_means_no_copy() {
        assert_eq!(rewrite(br#"{"model":"m"}"#, &Rewrite::default()), None);
    }

    #[test]
    fn injection_only_for_streams_of_endpoints_that_accept_it() {
        let mut f = parse(br#"{"model":"m","stream":true}"#).unwrap();
        assert_eq!(usage_injection(Endpoint::ChatCompletions, &f), (true, true));
        assert_eq!(usage_injection(Endpoint::Messages, &f), (false, false));
        assert_eq!(usage_injection(Endpoint::Responses, &f), (false, false));
        f.include_usage = Some(true);
        assert_eq!(
            usage_injection(Endpoint::ChatCompletions, &f),
            (false, false)
        );
        f.stream = false;
        f.include_usage = None;
        assert_eq!(usage_injection(Endpoint::Completions, &f), (false, false));
    }

    /// The facts as the gateway gets them from the prompt walk, when it can.
    fn walked(body: &[u8]) -> Option<RequestFacts> {
        let mut m = Members::default();
        let scanned = crate::engine::prompt::scan_body(
            crate::engine::prompt::Format::Chat,
            body,
            &mut |_, _| {},
            &mut |k, r| m.see(k, r),
        );
        scanned.whole.then(|| m.facts(body)).flatten()
    }

    #[test]
    fn a_walked_body_gives_the_facts_parse_gives() {
        for body in [
            &br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"max_completion_tokens":50,"stream_options":{"include_usage":false,"x":[1]}}"#[..],
            br#"{"model":"claude-sonnet-4","max_tokens":32000,"stream":true,"metadata":{"user_id":"user_1","other":{}},"system":"s"}"#,
            br#"{"model":"m","user":"alice","metadata":{"user_id":"bob"}}"#,
            br#"{"model":"m","user":42,"metadata":{"user_id":"bob"}}"#,
            br#"{"model":"m","user":null,"metadata":{"user_id":[1,2]}}"#,
            br#"{"model":"m","max_tokens":null,"stream":null,"stream_options":null,"metadata":null}"#,
            br#"{"model":"m","max_tokens":7,"max_output_tokens":9,"max_completion_tokens":0}"#,
            br#"{"model":"m","stream_options":{"include_usage":true}}"#,
            br#"{"model":"m","stream_options":{}}"#,
            b" \n{ \"model\" : \"m\" , \"stream\" : false }\n ",
            "{\"model\":\"mod\u{e8}le-\u{1F600}\"}".as_bytes(),
            // Top-level keys are unescaped by the walk, as serde unescapes them.
            br#"{"mod\u0065l":"gpt-4o"}"#,
        ] {
            let parsed = parse(body).unwrap();
            assert_eq!(
                walked(body),
                Some(parsed),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn forms_the_walk_does_not_read_are_left_to_parse() {
        for body in [
            // Valid, but not in plain form: parse reads them.
            &br#"{"model":"gpt-\u0034o"}"#[..],
            br#"{"model":"m","user":"a\"b"}"#,
            br#"{"model":"m","metadata":{"user_\u0069d":"x"}}"#,
            br#"{"model":"m","stream_options":{"include_usage":true},"stream_options":null}"#,
            br#"{"model":"m","user":"a","user":"b"}"#,
            // Invalid: parse gives the error.
            br#"{"model":"m","max_tokens":1.0}"#,
            br#"{"model":"m","max_tokens":1e3}"#,
            br#"{"model":"m","max_tokens":-1}"#,
            br#"{"model":"m","max_tokens":18446744073709551616}"#,
            br#"{"model":"m","stream":"yes"}"#,
            br#"{"model":"m","stream":1}"#,
            br#"{"model":"m","stream_options":[true]}"#,
            br#"{"model":"m","stream_options":{"include_usage":1}}"#,
            br#"{"model":"m","stream_options":{"include_usage":true,"include_usage":true}}"#,
            br#"{"model":"m","metadata":"x"}"#,
            br#"{"model":"m","metadata":{"user_id":"a","user_id":"b"}}"#,
            br#"{"model":42}"#,
            br#"{"model":null}"#,
            br#"{"model":"  "}"#,
            br#"{"messages":[]}"#,
            br#"{"model":"a","model":"b"}"#,
            br#"{"model":"m"} x"#,
        ] {
            assert_eq!(walked(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn no_body_parse_refuses_is_accepted_by_the_walk() {
        for body in [
            &b""[..],
            b"not json",
            b"[1,2]",
            br#"{"messages":[]}"#,
            br#"{"model":""}"#,
            br#"{"model":42}"#,
            br#"{"model":"m","max_tokens":-1}"#,
            br#"{"model":"m","stream":"yes"}"#,
            br#"{"model":"m""#,
            br#"{"model":"a","model":"b"}"#,
        ] {
            assert!(parse(body).is_err());
            assert_eq!(walked(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    mod walked_proptests {
        use super::*;
        use proptest::prelude::*;

        /// A JSON value as text, of the types and forms the fields come in.
        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just("null".to_string()),
                Just("true".to_string()),
                Just("false".to_string()),
                Just("0".to_string()),
                Just("-0".to_string()),
                Just("1.5".to_string()),
                Just("2e2".to_string()),
                Just("18446744073709551615".to_string()),
                Just("18446744073709551616".to_string()),
                any::<u32>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                Just(r#""gpt-4o""#.to_string()),
                Just(r#""""#.to_string()),
                Just(r#"" ""#.to_string()),
                Just(r#""\u0067pt""#.to_string()),
                Just(r#""a\"b""#.to_string()),
                "[a-z0-9 -]{0,8}".prop_map(|s| format!("\"{s}\"")),
                any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            ];
            leaf.prop_recursive(2, 12, 4, |inner| {
                let key = prop_oneof![
                    Just("include_usage".to_string()),
                    Just("user_id".to_string()),
                    Just(r"user_\u0069d".to_string()),
                    "[a-z]{1,3}",
                ];
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3)
                        .prop_map(|v| format!("[{}]", v.join(","))),
                    prop::collection::vec((key, inner), 0..3).prop_map(|kv| {
                        let members: Vec<String> = kv
                            .into_iter()
                            .map(|(k, v)| format!("\"{k}\":{v}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }),
                ]
            })
        }

        fn body() -> impl Strategy<Value = String> {
            let key = prop_oneof![
                Just("model".to_string()),
                Just("model".to_string()),
                Just("stream".to_string()),
                Just("max_tokens".to_string()),
                Just("max_completion_tokens".to_string()),
                Just("max_output_tokens".to_string()),
                Just("stream_options".to_string()),
                Just("user".to_string()),
                Just("metadata".to_string()),
                Just(r"mod\u0065l".to_string()),
                Just("messages".to_string()),
                "[a-z_]{1,6}",
            ];
            prop::collection::vec((key, value()), 0..7).prop_map(|kv| {
                let members: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            })
        }

        proptest! {
            #[test]
            fn the_walk_gives_what_parse_gives_or_leaves_it_to_parse(body in body()) {
                if let Some(facts) = walked(body.as_bytes()) {
                    prop_assert_eq!(Some(facts), parse(body.as_bytes()).ok());
                }
            }

            #[test]
            fn plain_bodies_are_read_by_the_walk(
                model in "[a-z0-9.-]{1,12}",
                stream in any::<Option<bool>>(),
                max in any::<Option<u64>>(),
                include in any::<Option<Option<bool>>>(),
                user in any::<Option<String>>(),
            ) {
                let mut v = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
                if let Some(s) = stream { v["stream"] = s.into(); }
                if let Some(m) = max { v["max_tokens"] = m.into(); }
                if let Some(i) = include { v["stream_options"] = serde_json::json!({"include_usage": i}); }
                if let Some(u) = user.filter(|u| !u.contains(['"', '\\']) && !u.chars().any(char::is_control)) {
                    v["metadata"] = serde_json::json!({"user_id": u});
                }
                let body = serde_json::to_vec(&v).unwrap_or_default();
                prop_assert_eq!(walked(&body), parse(&body).ok());
            }
        }
    }
}
