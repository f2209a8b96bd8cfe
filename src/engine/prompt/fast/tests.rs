//! The fast walk against the reference (serde) walk: the same texts in the same order, the
//! same bound; offsets that point at the text in the body; and, where the fast walk declines,
//! the texts it passed are the reference's first ones and the entry points give exactly the
//! reference's result.

use super::super::{scan_body, walk_serde, Acc, Format, Node};
use super::{walk, Bail};
use proptest::prelude::*;
use serde_json::json;
use std::ops::Range;

const ALL: [Format; 5] = [
    Format::Chat,
    Format::Completions,
    Format::Embeddings,
    Format::Responses,
    Format::Messages,
];

fn node(format: Format) -> Node {
    match format {
        Format::Chat => Node::ChatBody,
        Format::Completions => Node::CompletionsBody,
        Format::Embeddings => Node::EmbeddingsBody,
        Format::Responses => Node::ResponsesBody,
        Format::Messages => Node::MessagesBody,
    }
}

/// The reference walk: texts in order, and the bound.
fn reference(format: Format, body: &[u8]) -> (Vec<String>, u64) {
    let mut texts = Vec::new();
    let mut f = |t: &str, _: Option<usize>| texts.push(t.to_string());
    let mut acc = Acc::new(Some(&mut f));
    walk_serde(node(format), body, &mut acc);
    let bound = acc.bound();
    (texts, bound)
}

struct Fast {
    texts: Vec<(String, Option<usize>)>,
    members: Vec<(String, Range<usize>)>,
    bound: u64,
    ok: bool,
}

fn fast(format: Format, body: &str) -> Fast {
    let mut texts = Vec::new();
    let mut members = Vec::new();
    let mut f = |t: &str, at: Option<usize>| texts.push((t.to_string(), at));
    let mut acc = Acc::new(Some(&mut f));
    let ok = match walk(node(format), body, &mut acc, &mut |k, r| {
        members.push((k.to_string(), r))
    }) {
        Ok(()) => true,
        Err(Bail) => false,
    };
    let bound = acc.bound();
    Fast {
        texts,
        members,
        bound,
        ok,
    }
}

/// What the public entry point gives: texts (each once), the bound, whether it was whole.
fn combined(format: Format, body: &[u8]) -> (Vec<String>, u64, bool) {
    let mut texts = Vec::new();
    let scanned = scan_body(
        format,
        body,
        &mut |t, _| texts.push(t.to_string()),
        &mut |_, _| {},
    );
    (texts, scanned.bound, scanned.whole)
}

/// The fast walk read `body` and agrees with the reference in every way.
fn assert_same(format: Format, body: &str) {
    let f = fast(format, body);
    assert!(f.ok, "{format:?}: the fast walk declined {body:?}");
    let (texts, bound) = reference(format, body.as_bytes());
    let fast_texts: Vec<String> = f.texts.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(fast_texts, texts, "{format:?}: texts of {body:?}");
    assert_eq!(f.bound, bound, "{format:?}: bound of {body:?}");
    for (t, at) in &f.texts {
        if let Some(at) = at {
            assert_eq!(
                &body[*at..*at + t.len()],
                t,
                "the offset points at the text"
            );
        }
    }
    assert_eq!(
        combined(format, body.as_bytes()),
        (texts, bound, true),
        "{format:?}: the entry point"
    );
}

/// Whatever the fast walk makes of `body`, the entry point gives the reference's result, and
/// a fast walk that declined had passed only the reference's first texts.
fn assert_entry_is_reference(format: Format, body: &[u8]) {
    let (texts, bound) = reference(format, body);
    let (got, got_bound, whole) = combined(format, body);
    assert_eq!(
        got,
        texts,
        "{format:?}: texts of {:?}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(
        got_bound,
        bound,
        "{format:?}: bound of {:?}",
        String::from_utf8_lossy(body)
    );
    if let Ok(s) = std::str::from_utf8(body) {
        let f = fast(format, s);
        assert_eq!(f.ok, whole);
        let fast_texts: Vec<String> = f.texts.into_iter().map(|(t, _)| t).collect();
        assert!(
            texts.starts_with(&fast_texts),
            "{format:?}: the fast walk's texts are the reference's first ones"
        );
    } else {
        assert!(!whole);
    }
}

fn prose(n: usize, seed: usize) -> String {
    const WORDS: [&str; 12] = [
        "the", "agent", "reads", "files", "and", "runs", "tests", "before", "it", "edits", "code",
        "again",
    ];
    let mut out = String::new();
    let mut i = seed;
    while out.len() < n {
        out.push_str(WORDS[(i * 7 + 3) % WORDS.len()]);
        out.push(' ');
        i += 1;
    }
    out
}

fn schema(i: usize) -> serde_json::Value {
    let props: serde_json::Map<String, serde_json::Value> = (0..4)
        .map(|j| {
            (
                format!("arg_{j}"),
                json!({"type": "string", "description": prose(80, i * 10 + j)}),
            )
        })
        .collect();
    json!({"type": "object", "properties": props, "required": ["arg_0"],
           "additionalProperties": false, "minimum": -1.5e-3, "maxItems": 10})
}

#[test]
fn agent_shaped_bodies_are_walked_fast_and_exactly() {
    let tools: Vec<_> = (0..6)
        .map(|i| json!({"name": format!("Tool{i}"), "description": prose(300, i), "input_schema": schema(i)}))
        .collect();
    let claude = json!({
        "model": "claude-sonnet-4", "max_tokens": 32000, "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "metadata": {"user_id": "user_1"},
        "system": [{"type": "text", "text": "You are Claude Code."},
                   {"type": "text", "text": prose(2000, 9), "cache_control": {"type": "ephemeral"}}],
        "tools": tools,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "fix the \"bug\" in\nsrc/main.rs \u{e9}\u{1F600}"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "SIG"},
                {"type": "tool_use", "id": "toolu_01", "name": "Tool3", "input": {"path": "src/main.rs", "n": [1, 2.5, null, true]}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": prose(1500, 3), "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "document", "source": {"data": "doc \\ text", "type": "text", "media_type": "text/plain"}}]}]
    });
    let codex = json!({
        "model": "gpt-5", "instructions": prose(3000, 77), "store": false, "stream": true,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": prose(800, 5)}]},
                  {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{\"cmd\":[\"ls\",\"-la\"]}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "total 0\n"},
                  {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA"}],
        "tools": [{"type": "function", "name": "shell", "description": prose(200, 1), "strict": false, "parameters": schema(50)}],
        "reasoning": {"effort": "medium"}, "include": ["reasoning.encrypted_content"]
    });
    for (format, body) in [(Format::Messages, claude), (Format::Responses, codex)] {
        let compact = serde_json::to_string(&body).unwrap_or_default();
        assert_same(format, &compact);
        let pretty = serde_json::to_string_pretty(&body).unwrap_or_default();
        assert_same(format, &pretty);
    }
}

#[test]
fn escaped_texts_are_unescaped_and_raw_texts_point_into_the_body() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"plain"},
        {"role":"user","content":"a\"b\\c\/d\be\ff\ng\rh\ti"},
        {"role":"user","content":"\u00e9t\u00E9 \ud83d\ude00 \u0041"},
        {"role":"user","content":"déjà vu — ключ 🔑"}]}"#;
    let f = fast(Format::Chat, body);
    assert!(f.ok);
    assert_eq!(
        f.texts,
        [
            ("plain".to_string(), body.find("plain")),
            ("a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti".to_string(), None),
            ("été 😀 A".to_string(), None),
            ("déjà vu — ключ 🔑".to_string(), body.find("déjà")),
        ]
    );
    assert_same(Format::Chat, body);
}

#[test]
fn top_level_members_are_reported_with_unescaped_keys_and_value_ranges() {
    let body = r#" { "model" : "gpt-4o", "mod\u0065l2":[1,{"a":2}] ,"stream":true,
        "messages":[{"role":"user","content":"hi"}] } "#;
    let f = fast(Format::Chat, body);
    assert!(f.ok);
    let got: Vec<(String, &str)> = f
        .members
        .iter()
        .map(|(k, r)| (k.clone(), &body[r.clone()]))
        .collect();
    assert_eq!(
        got,
        [
            ("model".to_string(), "\"gpt-4o\""),
            ("model2".to_string(), "[1,{\"a\":2}]"),
            ("stream".to_string(), "true"),
            (
                "messages".to_string(),
                "[{\"role\":\"user\",\"content\":\"hi\"}]"
            ),
        ]
    );
}

#[test]
fn what_the_reference_might_read_differently_is_declined() {
    let deep = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"before\"}},{}]}}",
        "[".repeat(200) + &"]".repeat(200)
    );
    let declined = [
        // Lone surrogates: serde_json refuses them in text.
        r#"{"messages":[{"role":"user","content":"a\ud800b"}]}"#,
        r#"{"messages":[{"role":"user","content":"a\udc00b"}]}"#,
        r#"{"messages":[{"role":"user","content":"a\ud800\u0041"}]}"#,
        r#"{"messages":[{"role":"user","content":"bad \x escape"}]}"#,
        r#"{"messages":[{"role":"user","content":"short \u12"}]}"#,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"raw\nnewline\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"raw \u{1} control, long enough to pass the short loop\"}]}",
        r#"{"messages":[{"role":"user","content":"first"}],"n":1e400}"#,
        r#"{"messages":[{"role":"user","content":"first"}],"n":01}"#,
        r#"{"messages":[{"role":"user","content":"first"}],"n":1.}"#,
        r#"{"messages":[{"role":"user","content":"first"}],"n":-}"#,
        r#"{"messages":[{"role":"user","content":"first"},]}"#,
        r#"{"messages":[{"role":"user","content":"first"}],}"#,
        r#"{"messages":[{"role":"user","content":"first"}]} trailing"#,
        r#"{"messages":[{"role":"user","content":"first"}]"#,
        r#"{"messages":[{"role":"user","content":"unterminated"#,
        r#"{"messages":[{"role":"user" "content":"no comma"}]}"#,
        r#"{"messages":[{"role":"user","content":tru}]}"#,
        r#"{"messages":[{1:"user"}]}"#,
        r#"["not an object"]"#,
        "",
        deep.as_str(),
    ];
    for body in declined {
        for format in ALL {
            assert!(!fast(format, body).ok, "{format:?}: {body:?}");
            assert_entry_is_reference(format, body.as_bytes());
        }
    }
    // Not UTF-8: the fast walk never sees it.
    let mut bytes = br#"{"messages":[{"role":"user","content":"caf"#.to_vec();
    bytes.extend_from_slice(b"\xe9\"}]}");
    assert_entry_is_reference(Format::Chat, &bytes);
}

#[test]
fn a_body_declined_after_its_texts_passes_each_text_once() {
    // Every text is read before the trailing garbage makes the fast walk decline.
    let body = r#"{"messages":[{"role":"user","content":"one"},{"role":"user","content":"two"}]}]"#;
    let f = fast(Format::Chat, body);
    assert!(!f.ok);
    assert_eq!(f.texts.len(), 2);
    assert_eq!(
        combined(Format::Chat, body.as_bytes()),
        (
            vec!["one".to_string(), "two".to_string()],
            reference(Format::Chat, body.as_bytes()).1,
            false
        )
    );
}

#[test]
fn numbers_of_every_form_are_read() {
    let body = r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":
        {"name":"f","parameters":{"a":0,"b":-0,"c":12.5e-3,"d":1E+20,"e":-7.0,"f":18446744073709551616,
        "g":123456789012345678901234567890,"h":[true,false,null]}}}]}"#;
    assert_same(Format::Chat, body);
}

/// Arbitrary JSON, biased toward the keys the walk looks at and toward strings that need
/// escaping or are not ASCII.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("messages".to_string()),
        Just("content".to_string()),
        Just("text".to_string()),
        Just("type".to_string()),
        Just("input".to_string()),
        Just("source".to_string()),
        Just("data".to_string()),
        Just("media_type".to_string()),
        Just("tools".to_string()),
        Just("description".to_string()),
        Just("image_url".to_string()),
        Just("system".to_string()),
        Just("prompt".to_string()),
        Just("instructions".to_string()),
        Just("arguments".to_string()),
        Just("model".to_string()),
        "[a-z_]{1,8}",
        "\\PC{0,6}",
    ];
    let string = prop_oneof![
        Just("text".to_string()),
        Just("image".to_string()),
        Just("image/png".to_string()),
        Just("input_image".to_string()),
        Just("base64".to_string()),
        Just("sk-proj-\"quoted\"\n\\".to_string()),
        "[ -~]{0,40}",
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e12f64..1e12).prop_map(serde_json::Value::from),
        string.prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = serde_json::Value> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("messages".to_string()),
                Just("system".to_string()),
                Just("input".to_string()),
                Just("tools".to_string()),
                Just("prompt".to_string()),
                Just("instructions".to_string()),
                "[a-z_]{1,8}",
            ],
            json(),
        ),
        0..6,
    )
    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect()))
}

proptest! {
    #[test]
    fn valid_bodies_walk_fast_and_as_the_reference_does(v in object(), pretty in any::<bool>()) {
        let body = if pretty {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            serde_json::to_string(&v).unwrap_or_default()
        };
        for format in ALL {
            assert_same(format, &body);
        }
    }

    #[test]
    fn damaged_bodies_give_the_reference_result(
        v in object(),
        cut in any::<prop::sample::Index>(),
        insert in prop::option::of((any::<prop::sample::Index>(), prop_oneof![
            Just(b'"'), Just(b'\\'), Just(b','), Just(b'}'), Just(b']'), Just(b'\n'), Just(0x01u8),
            Just(0xffu8), Just(b'u'), Just(b'e'), Just(b'-'), any::<u8>(),
        ])),
    ) {
        let mut body = serde_json::to_vec(&v).unwrap_or_default();
        match insert {
            Some((at, byte)) => {
                let at = at.index(body.len() + 1);
                body.insert(at, byte);
            }
            None => body.truncate(cut.index(body.len() + 1)),
        }
        for format in ALL {
            assert_entry_is_reference(format, &body);
        }
    }
}
