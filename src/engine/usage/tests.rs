use super::*;
use proptest::prelude::*;

use crate::engine::pricing::Nanos;
use WireFormat::*;

struct Fixture {
    name: &'static str,
    body: &'static [u8],
    format: WireFormat,
    sse: bool,
    usage: Usage,
    text: u64,
    events: u64,
    complete: bool,
    /// Carries the usage-only chunk that strip mode removes.
    usage_chunk: bool,
}

const fn u(p: Option<u64>, c: Option<u64>, r: Option<u64>, w: Option<u64>) -> Usage {
    Usage {
        prompt_tokens: p,
        completion_tokens: c,
        cache_read_tokens: r,
        cache_write_tokens: w,
    }
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        name: "openai_chat_json",
        body: include_bytes!("fixtures/openai_chat_json.txt"),
        format: OpenAiChat,
        sse: false,
        usage: u(Some(1117), Some(46), Some(1024), None),
        text: 130,
        events: 0,
        complete: true,
        usage_chunk: false,
    },
    Fixture {
        name: "openai_chat_sse",
        body: include_bytes!("fixtures/openai_chat_sse.txt"),
        format: OpenAiChat,
        sse: true,
        usage: u(None, None, None, None),
        text: 46,
        events: 11,
        complete: true,
        usage_chunk: false,
    },
    Fixture {
        name: "openai_chat_sse_usage",
        body: include_bytes!("fixtures/openai_chat_sse_usage.txt"),
        format: OpenAiChat,
        sse: true,
        usage: u(Some(2061), Some(14), Some(1920), None),
        text: 46,
        events: 11,
        complete: true,
        usage_chunk: true,
    },
    Fixture {
        name: "openai_chat_sse_tools",
        body: include_bytes!("fixtures/openai_chat_sse_tools.txt"),
        format: OpenAiChat,
        sse: true,
        usage: u(Some(81), Some(16), Some(0), None),
        text: 28,
        events: 7,
        complete: true,
        usage_chunk: true,
    },
    Fixture {
        name: "openai_completions_json",
        body: include_bytes!("fixtures/openai_completions_json.txt"),
        format: OpenAiCompletions,
        sse: false,
        usage: u(Some(5), Some(7), None, None),
        text: 23,
        events: 0,
        complete: true,
        usage_chunk: false,
    },
    Fixture {
        name: "openai_completions_sse_usage",
        body: include_bytes!("fixtures/openai_completions_sse_usage.txt"),
        format: OpenAiCompletions,
        sse: true,
        usage: u(Some(5), Some(7), None, None),
        text: 23,
        events: 6,
        complete: true,
        usage_chunk: true,
    },
    Fixture {
        name: "openai_embeddings_json",
        body: include_bytes!("fixtures/openai_embeddings_json.txt"),
        format: OpenAiEmbeddings,
        sse: false,
        usage: u(Some(8), None, None, None),
        text: 0,
        events: 0,
        complete: true,
        usage_chunk: false,
    },
    Fixture {
        name: "openai_responses_json",
        body: include_bytes!("fixtures/openai_responses_json.txt"),
        format: OpenAiResponses,
        sse: false,
        usage: u(Some(2328), Some(22), Some(2176), None),
        text: 92,
        events: 0,
        complete: true,
        usage_chunk: false,
    },
    Fixture {
        name: "openai_responses_sse",
        body: include_bytes!("fixtures/openai_responses_sse.txt"),
        format: OpenAiResponses,
        sse: true,
        usage: u(Some(1862), Some(211), Some(1792), None),
        text: 81,
        events: 17,
        complete: true,
        usage_chunk: false,
    },
    Fixture {
        name: "anthropic_messages_json",
        body: include_bytes!("fixtures/anthropic_messages_json.txt"),
        format: AnthropicMessages,
        sse: false,
        usage: u(Some(12), Some(19), Some(2048), Some(0)),
        text: 57,
        events: 0,
        complete: true,
        usage_chunk: false,
    },
    Fixture {
        name: "anthropic_messages_sse",
        body: include_bytes!("fixtures/anthropic_messages_sse.txt"),
        format: AnthropicMessages,
        sse: true,
        usage: u(Some(472), Some(89), Some(3072), Some(1536)),
        text: 121,
        events: 9,
        complete: true,
        usage_chunk: false,
    },
    Fixture {
        name: "anthropic_messages_sse_error",
        body: include_bytes!("fixtures/anthropic_messages_sse_error.txt"),
        format: AnthropicMessages,
        sse: true,
        usage: u(Some(25), Some(1), Some(0), Some(0)),
        text: 36,
        events: 1,
        complete: false,
        usage_chunk: false,
    },
];

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    usage: Usage,
    text: u64,
    events: u64,
    error: Option<String>,
    complete: bool,
    dropped: u64,
    out: Vec<u8>,
}

/// Feeds `chunks` (alternating the `&[u8]` and `Bytes` entry points, which must agree) and
/// collects everything a client would receive.
fn run_with(mut s: UsageScanner, strip: bool, chunks: &[&[u8]]) -> Outcome {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let f = if i % 2 == 0 {
            s.feed(c)
        } else {
            s.feed_bytes(&Bytes::copy_from_slice(c))
        };
        match f {
            Feed::Pass => out.extend_from_slice(c),
            Feed::Replace(b) => {
                assert!(
                    strip,
                    "a scanner without stripping must never replace a chunk"
                );
                out.extend_from_slice(&b);
            }
        }
    }
    if let Some(b) = s.finish() {
        assert!(strip, "a scanner without stripping never holds bytes back");
        out.extend_from_slice(&b);
    }
    assert_eq!(s.finish(), None, "finish is idempotent");
    Outcome {
        usage: s.usage(),
        text: s.output_text_bytes(),
        events: s.output_events(),
        error: s.stream_error().map(str::to_owned),
        complete: s.stream_complete(),
        dropped: s.dropped_events(),
        out,
    }
}

fn run(format: WireFormat, sse: bool, strip: bool, chunks: &[&[u8]]) -> Outcome {
    run_with(UsageScanner::new(format, sse, strip), strip, chunks)
}

fn whole(f: &Fixture, body: &[u8], strip: bool) -> Outcome {
    run(f.format, f.sse, strip, &[body])
}

/// The events of an SSE body (each with its terminating blank line), split on `sep`.
fn blocks<'a>(body: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut v = Vec::new();
    let mut rest = body;
    while let Some(k) = memchr::memmem::find(rest, sep) {
        v.push(&rest[..k + sep.len()]);
        rest = &rest[k + sep.len()..];
    }
    if !rest.is_empty() {
        v.push(rest);
    }
    v
}

fn is_usage_block(b: &[u8]) -> bool {
    memchr::memmem::find(b, br#""choices":[]"#).is_some()
        && memchr::memmem::find(b, br#""usage":{"#).is_some()
}

/// What a client must receive in strip mode, computed without the scanner: the body minus
/// the usage-only event.
fn expected_stripped(body: &[u8], sep: &[u8]) -> Vec<u8> {
    blocks(body, sep)
        .into_iter()
        .filter(|b| !is_usage_block(b))
        .flatten()
        .copied()
        .collect()
}

fn expected_out(f: &Fixture, body: &[u8], strip: bool, sep: &[u8]) -> Vec<u8> {
    if strip && f.sse && matches!(f.format, OpenAiChat | OpenAiCompletions) {
        expected_stripped(body, sep)
    } else {
        body.to_vec()
    }
}

fn crlf(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() * 2);
    for &b in body {
        if b == b'\n' {
            v.extend_from_slice(b"\r\n");
        } else {
            v.push(b);
        }
    }
    v
}

fn cr_only(body: &[u8]) -> Vec<u8> {
    body.iter()
        .map(|&b| if b == b'\n' { b'\r' } else { b })
        .collect()
}

#[test]
fn each_fixture_reports_its_usage_text_and_completion_when_fed_whole() {
    for f in FIXTURES {
        let o = whole(f, f.body, false);
        assert_eq!(o.usage, f.usage, "{}: usage", f.name);
        assert_eq!(o.text, f.text, "{}: output text bytes", f.name);
        assert_eq!(o.events, f.events, "{}: output events", f.name);
        assert_eq!(o.complete, f.complete, "{}: complete", f.name);
        assert_eq!(o.dropped, 0, "{}: dropped", f.name);
        assert_eq!(o.out, f.body, "{}: pass-through", f.name);
        let s = {
            let mut s = UsageScanner::new(f.format, f.sse, false);
            s.feed(f.body);
            s.finish();
            s
        };
        assert_eq!(s.reported(), !f.usage.is_empty(), "{}: reported", f.name);
    }
}

#[test]
fn every_fixture_split_at_every_offset_gives_the_whole_feed_result_and_exact_output() {
    for f in FIXTURES {
        for strip in [false, true] {
            let want = whole(f, f.body, strip);
            assert_eq!(
                want.out,
                expected_out(f, f.body, strip, b"\n\n"),
                "{}",
                f.name
            );
            for k in 0..=f.body.len() {
                let (a, b) = f.body.split_at(k);
                let got = run(f.format, f.sse, strip, &[a, b]);
                assert_eq!(got, want, "{} strip={strip} split at {k}", f.name);
            }
        }
    }
}

#[test]
fn every_fixture_fed_one_byte_at_a_time_gives_the_whole_feed_result() {
    for f in FIXTURES {
        for strip in [false, true] {
            let chunks: Vec<&[u8]> = f.body.chunks(1).collect();
            let got = run(f.format, f.sse, strip, &chunks);
            assert_eq!(got, whole(f, f.body, strip), "{} strip={strip}", f.name);
            assert_eq!(got.usage, f.usage, "{}", f.name);
            assert_eq!(
                got.out,
                expected_out(f, f.body, strip, b"\n\n"),
                "{}",
                f.name
            );
        }
    }
}

#[test]
fn strip_mode_output_is_the_input_minus_exactly_the_usage_chunk_and_ends_with_done() {
    for f in FIXTURES.iter().filter(|f| f.usage_chunk) {
        let o = whole(f, f.body, true);
        assert_eq!(o.usage, f.usage, "{}: usage is still counted", f.name);
        let usage_blocks = blocks(f.body, b"\n\n")
            .into_iter()
            .filter(|b| is_usage_block(b))
            .count();
        assert_eq!(usage_blocks, 1, "{}: fixture has one usage chunk", f.name);
        assert!(o.out.len() < f.body.len());
        assert!(o.out.ends_with(b"data: [DONE]\n\n"), "{}", f.name);
        assert!(memchr::memmem::find(&o.out, br#""choices":[]"#).is_none());
        assert!(
            memchr::memmem::find(&o.out, br#""usage":{"#).is_none(),
            "{}: no usage object reaches the client",
            f.name
        );
    }
}

#[test]
fn crlf_line_endings_split_anywhere_give_the_same_usage_and_exact_output() {
    for f in FIXTURES.iter().filter(|f| f.sse) {
        let body = crlf(f.body);
        let lf = whole(f, f.body, false);
        for strip in [false, true] {
            let want = whole(f, &body, strip);
            assert_eq!(want.usage, f.usage, "{}", f.name);
            assert_eq!((want.text, want.events), (lf.text, lf.events), "{}", f.name);
            assert_eq!(
                want.out,
                expected_out(f, &body, strip, b"\r\n\r\n"),
                "{}",
                f.name
            );
            for k in 0..=body.len() {
                let (a, b) = body.split_at(k);
                let got = run(f.format, f.sse, strip, &[a, b]);
                assert_eq!(got, want, "{} strip={strip} split at {k}", f.name);
            }
        }
    }
}

#[test]
fn cr_only_line_endings_give_the_same_usage_byte_by_byte() {
    for f in FIXTURES.iter().filter(|f| f.sse) {
        let body = cr_only(f.body);
        for strip in [false, true] {
            let chunks: Vec<&[u8]> = body.chunks(1).collect();
            let got = run(f.format, f.sse, strip, &chunks);
            assert_eq!(got.usage, f.usage, "{}", f.name);
            assert_eq!(got.text, f.text, "{}", f.name);
            assert_eq!(
                got.out,
                expected_out(f, &body, strip, b"\r\r"),
                "{}",
                f.name
            );
        }
    }
}

#[test]
fn strip_mode_passes_whole_event_chunks_without_copying() {
    let f = &FIXTURES[2];
    let mut s = UsageScanner::new(f.format, true, true);
    for b in blocks(f.body, b"\n\n") {
        match s.feed(b) {
            Feed::Pass => assert!(!is_usage_block(b), "the usage chunk must not pass"),
            Feed::Replace(r) => {
                assert!(is_usage_block(b), "only the usage chunk is replaced");
                assert!(r.is_empty());
            }
        }
    }
    assert_eq!(s.finish(), None);
    assert_eq!(s.usage(), f.usage);
}

#[test]
fn strip_mode_slices_the_chunk_when_the_usage_chunk_is_at_its_start_or_end() {
    let f = &FIXTURES[2];
    let bl = blocks(f.body, b"\n\n");
    let n = bl.len();
    // ...last content chunk + usage chunk, then [DONE] alone.
    let tail: Vec<u8> = [bl[n - 3], bl[n - 2]].concat();
    let mut s = UsageScanner::new(OpenAiChat, true, true);
    let tail_bytes = Bytes::from(tail);
    match s.feed_bytes(&tail_bytes) {
        Feed::Replace(r) => {
            assert_eq!(&r[..], bl[n - 3]);
            // A slice of the fed Bytes, not a copy.
            assert_eq!(r.as_ptr(), tail_bytes.as_ptr());
        }
        Feed::Pass => panic!("the usage chunk must be removed"),
    }
    assert_eq!(s.feed(bl[n - 1]), Feed::Pass);
}

#[test]
fn strip_mode_holds_back_a_partial_event_until_it_completes() {
    let ev =
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
    let mut s = UsageScanner::new(OpenAiChat, true, true);
    assert_eq!(s.feed(&ev[..10]), Feed::Replace(Bytes::new()));
    assert_eq!(
        s.feed(&ev[10..]),
        Feed::Replace(Bytes::copy_from_slice(ev)),
        "held bytes come out with the rest of their event"
    );
    assert_eq!(s.output_text_bytes(), 2);
}

#[test]
fn finish_releases_a_final_event_without_its_blank_line_but_drops_a_usage_only_one() {
    let last = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"end\"}}]}";
    let mut s = UsageScanner::new(OpenAiChat, true, true);
    assert_eq!(s.feed(last), Feed::Replace(Bytes::new()));
    assert_eq!(s.finish(), Some(Bytes::copy_from_slice(last)));
    assert_eq!(s.output_text_bytes(), 3);

    let usage = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n";
    let mut s = UsageScanner::new(OpenAiChat, true, true);
    assert_eq!(s.feed(usage), Feed::Replace(Bytes::new()));
    assert_eq!(
        s.finish(),
        None,
        "an unterminated usage-only chunk is still removed"
    );
    assert_eq!(s.usage(), u(Some(3), Some(4), None, None));
}

#[test]
fn strip_mode_forwards_an_event_too_big_to_be_the_usage_chunk_instead_of_holding_it() {
    let text = "x".repeat(200 * 1024);
    let ev =
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n");
    let body = [ev.as_bytes(), b"data: [DONE]\n\n"].concat();
    let mut s = UsageScanner::new(OpenAiChat, true, true);
    let mut out = Vec::new();
    for c in body.chunks(16 * 1024) {
        match s.feed(c) {
            Feed::Pass => out.extend_from_slice(c),
            Feed::Replace(b) => out.extend_from_slice(&b),
        }
        assert!(s.buffered_bytes() <= 2 * STRIP_HOLD_MAX + 512 * 1024);
    }
    // Forwarded as it came: at most the hold-back cap was ever behind.
    assert!(out.len() + STRIP_HOLD_MAX >= ev.len());
    out.extend(s.finish().unwrap_or_default());
    assert_eq!(out, body);
    assert_eq!(s.output_text_bytes(), text.len() as u64);
}

#[test]
fn strip_is_ignored_for_formats_and_bodies_it_does_not_apply_to() {
    for f in FIXTURES
        .iter()
        .filter(|f| !f.sse || !matches!(f.format, OpenAiChat | OpenAiCompletions))
    {
        let mut s = UsageScanner::new(f.format, f.sse, true);
        for c in f.body.chunks(7) {
            assert_eq!(s.feed(c), Feed::Pass, "{}", f.name);
        }
        assert_eq!(s.finish(), None, "{}", f.name);
    }
}

#[test]
fn a_chunk_with_empty_choices_but_no_usage_is_not_stripped() {
    let body =
        b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[]}\n\ndata: [DONE]\n\n";
    let o = run(OpenAiChat, true, true, &[body]);
    assert_eq!(o.out, body);
}

#[test]
fn only_a_chunk_whose_choices_is_exactly_an_empty_array_and_that_has_usage_is_stripped() {
    let u = r#""usage":{"prompt_tokens":3,"completion_tokens":2}"#;
    let kept = [
        // Usage in the same chunk as the last delta: that chunk is the client's, keep it.
        format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"hi"}}}}],{u}}}"#),
        format!(r#"{{"choices":null,{u}}}"#),
        format!(r#"{{"choices":[null],{u}}}"#),
        format!(r#"{{"choices":[[]],{u}}}"#),
        format!(r#"{{"choices":"[]",{u}}}"#),
        format!(r#"{{"nested":{{"choices":[]}},{u}}}"#),
    ];
    for chunk in &kept {
        let body = format!("data: {chunk}\n\ndata: [DONE]\n\n");
        let o = run(OpenAiChat, true, true, &[body.as_bytes()]);
        assert_eq!(o.out, body.as_bytes(), "kept: {chunk}");
        assert_eq!(
            o.usage.completion_tokens,
            Some(2),
            "usage still read from {chunk}"
        );
    }
    for chunk in [
        format!(r#"{{"choices":[],{u}}}"#),
        format!(r#"{{"choices" : [ ] , {u}}}"#),
        format!(r#"{{{u},"choices":[]}}"#),
        format!("{{\"choices\":[\t],{u}}}"),
    ] {
        let body = format!("data: {chunk}\n\ndata: [DONE]\n\n");
        let o = run(OpenAiChat, true, true, &[body.as_bytes()]);
        assert_eq!(o.out, b"data: [DONE]\n\n", "stripped: {chunk}");
        assert_eq!(o.usage.completion_tokens, Some(2));
    }
}

#[test]
fn stream_chunk_text_counts_every_output_field_and_nothing_else() {
    let body = concat!(
        r#"data: {"id":"content","choices":[{"delta":{"role":"assistant","content":"abc"}}]}"#,
        "\n\n",
        r#"data: {"choices":[{"delta":{"refusal":"no","reasoning_content":"hmm"}}],"model":"text"}"#,
        "\n\n",
        r#"data: {"choices":[{"delta":{"tool_calls":[{"id":"x","function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
        "\n\n",
        r#"data: {"choices":[{"text":"legacy","logprobs":{"content":[{"token":"t"}]}}]}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );
    for split in 0..body.len() {
        let (a, b) = body.as_bytes().split_at(split);
        let o = run(OpenAiChat, true, false, &[a, b]);
        // abc + no + hmm + {"a":1} (an escape counts as one byte) + legacy; keys, ids and
        // other strings never count.
        assert_eq!(o.text, 3 + 2 + 3 + 7 + 6, "split at {split}");
        assert_eq!(o.events, 4, "split at {split}");
        assert!(o.complete);
    }
}

#[test]
fn a_stream_cut_before_the_usage_chunk_reports_nothing_but_estimates_output() {
    let f = &FIXTURES[2];
    let cut = memchr::memmem::find(f.body, br#""choices":[]"#).unwrap() - 40;
    let mut s = UsageScanner::new(OpenAiChat, true, false);
    s.feed(&f.body[..cut]);
    s.finish();
    assert!(!s.reported());
    assert!(!s.stream_complete());
    assert_eq!(s.output_text_bytes(), 46);
    assert_eq!(s.estimated_completion_tokens(), 12); // max(ceil(46/4), 11 events)
}

#[test]
fn an_anthropic_stream_cut_mid_event_keeps_the_partial_usage_and_estimates_output() {
    let f = &FIXTURES[10];
    let cut = memchr::memmem::find(f.body, b"the weather").unwrap();
    let mut s = UsageScanner::new(AnthropicMessages, true, false);
    for c in f.body[..cut].chunks(5) {
        s.feed(c);
    }
    s.finish();
    assert!(s.reported());
    assert!(!s.stream_complete());
    // message_start's placeholder output count, not the final one.
    assert_eq!(s.usage(), u(Some(472), Some(2), Some(3072), Some(1536)));
    assert_eq!(
        s.output_text_bytes(),
        ("Okay".len() + ", let me check".len()) as u64
    );
    assert!(s.estimated_completion_tokens() > 0);
}

#[test]
fn a_json_body_cut_before_usage_reports_nothing_and_is_not_complete() {
    let f = &FIXTURES[0];
    let cut = memchr::memmem::find(f.body, b"\"usage\": {").unwrap() + 12;
    let mut s = UsageScanner::new(OpenAiChat, false, false);
    s.feed(&f.body[..cut]);
    s.finish();
    assert!(!s.reported());
    assert!(!s.stream_complete());
    assert_eq!(s.estimated_completion_tokens(), 130_u64.div_ceil(4));
}

#[test]
fn anthropic_error_event_is_captured() {
    let o = whole(&FIXTURES[11], FIXTURES[11].body, false);
    assert_eq!(o.error.as_deref(), Some("overloaded_error: Overloaded"));
}

#[test]
fn openai_error_chunk_is_captured() {
    let body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
    let o = run(OpenAiChat, true, false, &[body]);
    assert_eq!(
        o.error.as_deref(),
        Some("server_error: The server had an error while processing your request.")
    );
    assert_eq!(o.text, 3);
}

#[test]
fn responses_error_and_failed_events_are_captured() {
    let body = b"event: error\ndata: {\"type\":\"error\",\"code\":\"ERR_SOMETHING\",\"message\":\"Something went wrong\",\"param\":null,\"sequence_number\":1}\n\n";
    let o = run(OpenAiResponses, true, false, &[body]);
    assert_eq!(
        o.error.as_deref(),
        Some("ERR_SOMETHING: Something went wrong")
    );

    let body = b"event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_1\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The model failed to generate a response.\"},\"usage\":{\"input_tokens\":10,\"output_tokens\":0}}}\n\n";
    let o = run(OpenAiResponses, true, false, &[body]);
    assert_eq!(
        o.error.as_deref(),
        Some("server_error: The model failed to generate a response.")
    );
    assert_eq!(o.usage, u(Some(10), Some(0), None, None));
    assert!(o.complete);
}

#[test]
fn a_json_error_body_is_captured_but_a_null_error_is_not() {
    let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: field required"}}"#;
    let o = run(AnthropicMessages, false, false, &[body]);
    assert_eq!(
        o.error.as_deref(),
        Some("invalid_request_error: max_tokens: field required")
    );
    let o = whole(&FIXTURES[7], FIXTURES[7].body, false);
    assert_eq!(o.error, None, "Responses bodies carry \"error\": null");
}

#[test]
fn error_text_is_bounded_and_cut_on_a_char_boundary() {
    let msg = "é".repeat(3000);
    let body = format!("event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"x\",\"message\":\"{msg}\"}}}}\n\n");
    let o = run(AnthropicMessages, true, false, &[body.as_bytes()]);
    let e = o.error.unwrap();
    assert!(e.len() <= 1024 && e.starts_with("x: éé"));
}

#[test]
fn anthropic_message_delta_repeating_input_fields_merges_by_max() {
    let body = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":15}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":12}}\n\n";
    let o = run(AnthropicMessages, true, false, &[body]);
    assert_eq!(o.usage, u(Some(25), Some(15), Some(100), Some(0)));
}

#[test]
fn merge_max_keeps_reported_fields_and_takes_the_larger() {
    let mut a = u(Some(5), None, Some(1), None);
    a.merge_max(&u(Some(3), Some(7), None, None));
    assert_eq!(a, u(Some(5), Some(7), Some(1), None));
    assert!(!a.is_empty());
    assert!(Usage::default().is_empty());
    assert!(
        !u(None, None, None, Some(0)).is_empty(),
        "a reported 0 is reported"
    );
}

#[test]
fn reasoning_tokens_are_reported_apart_and_already_in_completion_tokens() {
    let f = &FIXTURES[8];
    let mut s = UsageScanner::new(f.format, true, false);
    s.feed(f.body);
    assert_eq!(s.reasoning_tokens(), Some(192));
    assert_eq!(s.usage().completion_tokens, Some(211));
}

#[test]
fn absurd_and_wrongly_typed_numbers_read_as_not_reported() {
    let body = br#"data: {"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":18446744073709551616,"total_tokens":"12","prompt_tokens_details":7,"completion_tokens_details":{"reasoning_tokens":1.5}}}

data: {"choices":[],"usage":{"prompt_tokens":12.0,"completion_tokens":true}}

data: {"choices":[],"usage":{"prompt_tokens":1e400}}

data: {"choices":[],"usage":{"prompt_tokens":18446744073709551615}}

"#;
    let mut s = UsageScanner::new(OpenAiChat, true, false);
    s.feed(body);
    assert_eq!(s.usage(), u(Some(u64::MAX), None, None, None));
    assert_eq!(s.reasoning_tokens(), None);
    let mut s = UsageScanner::new(OpenAiChat, true, false);
    s.feed(&body[..memchr::memmem::find(body, b"1e400").unwrap()]);
    assert_eq!(s.usage(), u(Some(12), None, None, None));
}

#[test]
fn only_the_top_level_usage_key_of_a_json_body_counts() {
    let body = br#"{"metadata":{"usage":{"prompt_tokens":1}},"note":"\"usage\":{\"prompt_tokens\":2}","list":[{"usage":{"prompt_tokens":4}}],"usage" : {"prompt_tokens":3,"completion_tokens":9} ,"tail":[1,2]}"#;
    for k in 0..=body.len() {
        let (a, b) = body.split_at(k);
        let o = run(OpenAiChat, false, false, &[a, b]);
        assert_eq!(o.usage, u(Some(3), Some(9), None, None), "split at {k}");
        assert!(o.complete);
    }
}

#[test]
fn a_json_usage_value_over_the_capture_cap_is_ignored_without_growing_memory() {
    let pad = "1,".repeat(json::CAPTURE_MAX);
    let body = format!(r#"{{"usage":{{"pad":[{pad}0],"prompt_tokens":3}}}}"#);
    let mut s = UsageScanner::new(OpenAiChat, false, false);
    for c in body.as_bytes().chunks(4096) {
        s.feed(c);
        assert!(s.buffered_bytes() <= json::CAPTURE_MAX);
    }
    s.finish();
    assert!(!s.reported());
}

#[test]
fn a_multi_megabyte_embeddings_body_is_scanned_without_buffering_it() {
    let mut body = String::from(r#"{"object":"list","data":["#);
    for i in 0..100 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"object":"embedding","index":{i},"embedding":["#
        ));
        for j in 0..3072 {
            if j > 0 {
                body.push(',');
            }
            body.push_str("-0.0123456789");
        }
        body.push_str("]}");
    }
    body.push_str(
        r#"],"model":"text-embedding-3-large","usage":{"prompt_tokens":4096,"total_tokens":4096}}"#,
    );
    assert!(body.len() > 4 * 1024 * 1024);
    let mut s = UsageScanner::new(OpenAiEmbeddings, false, false);
    for c in body.as_bytes().chunks(16 * 1024) {
        assert_eq!(s.feed(c), Feed::Pass);
        assert!(
            s.buffered_bytes() <= 1024,
            "nothing of the data array is kept"
        );
    }
    assert_eq!(s.finish(), None);
    assert_eq!(s.usage(), u(Some(4096), None, None, None));
    assert_eq!(s.estimated_completion_tokens(), 0);
}

#[test]
fn an_event_over_the_cap_is_dropped_and_scanning_continues() {
    let big = "y".repeat(4000);
    let body = format!(
        "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"output\":\"{big}\",\"usage\":{{\"input_tokens\":999}}}}}}\n\n\
event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"usage\":{{\"input_tokens\":5,\"output_tokens\":6}}}}}}\n\n"
    );
    for chunk in [body.len(), 100, 1] {
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(chunk).collect();
        let s = UsageScanner::new(OpenAiResponses, true, false).with_max_event_bytes(1024);
        let o = run_with(s, false, &chunks);
        assert_eq!(o.dropped, 1, "chunk size {chunk}");
        assert_eq!(
            o.usage,
            u(Some(5), Some(6), None, None),
            "chunk size {chunk}"
        );
    }
    assert_eq!(DEFAULT_MAX_EVENT_BYTES, 16 * 1024 * 1024);
}

#[test]
fn sse_details_multiline_data_no_space_comments_ids_and_a_bom() {
    let body = b"\xEF\xBB\xBF: keep-alive comment\n\
retry: 3000\n\
id: 7\n\
event: message_start\n\
data:{\"type\":\"message_start\",\n\
data:  \"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n\
data\n\n\
event: message_delta\r\n\
data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\r\r\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"abc\"}}\n\n";
    for k in 0..=body.len() {
        let (a, b) = body.split_at(k);
        let o = run(AnthropicMessages, true, false, &[a, b]);
        assert_eq!(o.usage, u(Some(11), Some(4), None, None), "split at {k}");
        assert_eq!(o.text, 3, "split at {k}");
    }
}

#[test]
fn event_names_that_carry_nothing_are_not_parsed() {
    // Usage inside a `ping` or `response.output_item.done` is not where providers put it;
    // skipping those events unparsed is what keeps big `*.done` events cheap.
    let body = b"event: ping\ndata: {\"type\":\"ping\",\"usage\":{\"output_tokens\":50}}\n\n";
    assert!(run(AnthropicMessages, true, false, &[body])
        .usage
        .is_empty());
    let body = b"event: response.output_item.done\ndata: {\"response\":{\"usage\":{\"input_tokens\":50}}}\n\n";
    assert!(run(OpenAiResponses, true, false, &[body]).usage.is_empty());
    let body = b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":50}}\n\n";
    assert_eq!(
        run(AnthropicMessages, true, false, &[body])
            .usage
            .completion_tokens,
        Some(50),
        "an event without a name is parsed"
    );
}

#[test]
fn responses_audio_deltas_are_not_counted_as_text() {
    let body = b"event: response.audio.delta\ndata: {\"type\":\"response.audio.delta\",\"delta\":\"UklGRiQAAABXQVZF\"}\n\n\
event: response.refusal.delta\ndata: {\"type\":\"response.refusal.delta\",\"delta\":\"No.\"}\n\n";
    let o = run(OpenAiResponses, true, false, &[body]);
    assert_eq!((o.text, o.events), (3, 1));
}

#[test]
fn estimate_is_the_larger_of_bytes_over_four_and_content_events() {
    let many_short = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n".repeat(10);
    let o = run(OpenAiChat, true, false, &[&many_short]);
    assert_eq!((o.text, o.events), (10, 10));
    let mut s = UsageScanner::new(OpenAiChat, true, false);
    s.feed(&many_short);
    assert_eq!(s.estimated_completion_tokens(), 10);

    let one_long = b"data: {\"choices\":[{\"delta\":{\"content\":\"abcdefghijklmnopq\"}}]}\n\n";
    let mut s = UsageScanner::new(OpenAiChat, true, false);
    s.feed(one_long);
    assert_eq!(s.estimated_completion_tokens(), 5); // ceil(17 / 4)
}

#[test]
fn cache_semantics_differ_by_provider() {
    assert!(OpenAiChat.cache_is_subset_of_prompt());
    assert!(OpenAiResponses.cache_is_subset_of_prompt());
    assert!(!AnthropicMessages.cache_is_subset_of_prompt());
}

// ---- property tests ----

/// Splits `body` at the given (unsorted, possibly repeated) offsets.
fn split_at_points(body: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    for p in points.iter_mut() {
        *p %= body.len() + 1;
    }
    points.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(&body[last..p]);
        last = p;
    }
    out.push(&body[last..]);
    out
}

const FORMATS: [WireFormat; 5] = [
    OpenAiChat,
    OpenAiCompletions,
    OpenAiEmbeddings,
    OpenAiResponses,
    AnthropicMessages,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_chunkings_of_each_fixture_agree(
        idx in 0..FIXTURES.len(),
        points in prop::collection::vec(any::<usize>(), 0..40),
        strip in any::<bool>(),
        crlf_endings in any::<bool>(),
    ) {
        let f = &FIXTURES[idx];
        let body = if crlf_endings && f.sse { crlf(f.body) } else { f.body.to_vec() };
        let chunks = split_at_points(&body, points);
        let got = run(f.format, f.sse, strip, &chunks);
        prop_assert_eq!(&got, &whole(f, &body, strip));
        prop_assert_eq!(got.usage, f.usage);
        let sep: &[u8] = if crlf_endings && f.sse { b"\r\n\r\n" } else { b"\n\n" };
        prop_assert_eq!(got.out, expected_out(f, &body, strip, sep));
    }

    #[test]
    fn random_bytes_never_panic_and_do_not_depend_on_chunking(
        body in prop::collection::vec(
            prop_oneof![
                any::<u8>(),
                prop::sample::select(b"{}[]\":,\\ \r\ndata:event\n\nusage".to_vec()),
            ],
            0..600,
        ),
        points in prop::collection::vec(any::<usize>(), 0..20),
        fi in 0..5usize,
        sse in any::<bool>(),
        strip in any::<bool>(),
    ) {
        let chunks = split_at_points(&body, points);
        let got = run(FORMATS[fi], sse, strip, &chunks);
        let want = run(FORMATS[fi], sse, strip, &[&body]);
        prop_assert_eq!(&got, &want);
        if !strip {
            prop_assert_eq!(&got.out, &body);
        }
    }

    #[test]
    fn corrupted_fixtures_never_panic_and_do_not_depend_on_chunking(
        idx in 0..FIXTURES.len(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..8),
        points in prop::collection::vec(any::<usize>(), 0..20),
        strip in any::<bool>(),
    ) {
        let f = &FIXTURES[idx];
        let mut body = f.body.to_vec();
        for (at, byte, op) in edits {
            let at = at % (body.len() + 1);
            match op {
                0 => body.insert(at, byte),
                1 if at < body.len() => { body.remove(at); }
                _ if at < body.len() => body[at] = byte,
                _ => body.push(byte),
            }
        }
        let chunks = split_at_points(&body, points);
        prop_assert_eq!(run(f.format, f.sse, strip, &chunks), whole(f, &body, strip));
    }
}

/// One OpenAI chat chunk for the prefix-reuse tests: `id` is what changes between the two
/// renderings of a stream, the rest is what the case drew.
fn chunk_json(id: &str, delta: &str, usage: &str, usage_first: bool, extra: &str) -> String {
    let head = format!(r#""id":"{id}","object":"chat.completion.chunk","model":"m"{extra}"#);
    let choices = format!(r#""choices":[{{"index":0,"delta":{delta}}}]"#);
    if usage_first {
        format!("{{{head},\"usage\":{usage},{choices}}}")
    } else {
        format!("{{{head},{choices},\"usage\":{usage}}}")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Reusing the tokenizer state of a repeated chunk prefix is exact: a stream whose chunks
    /// share their prefix reads like the same stream with a different id in every chunk (which
    /// defeats the reuse), whatever the deltas, escapes, usage placement and chunking.
    #[test]
    fn a_shared_chunk_prefix_reads_exactly_like_distinct_ones(
        deltas in prop::collection::vec(
            prop_oneof![
                "[a-z \\\\\"n{}:,]{0,12}".prop_map(|t| format!(r#"{{"content":"{t}"}}"#)),
                "[a-z]{0,8}".prop_map(|t| format!(r#"{{"role":"assistant","content":"{t}","refusal":null}}"#)),
                "[a-z]{0,8}".prop_map(|t| format!(r#"{{"reasoning_content":"{t}"}}"#)),
                "[a-z]{0,8}".prop_map(|t| format!(
                    r#"{{"tool_calls":[{{"index":0,"function":{{"arguments":"{t}"}}}}]}}"#)),
                Just("{}".to_string()),
            ],
            1..12,
        ),
        usage_first in any::<bool>(),
        extra in prop::sample::select(vec!["", r#","system_fingerprint":"fp""#, r#","x":[1,{"text":"t"}]"#]),
        final_usage in any::<bool>(),
        strip in any::<bool>(),
        points in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let render = |distinct: bool| {
            let mut body = String::new();
            for (i, d) in deltas.iter().enumerate() {
                // Same length either way, so only the bytes of the id differ.
                let id = if distinct { format!("chatcmpl-{i:04}") } else { "chatcmpl-0000".to_string() };
                body.push_str(&format!("data: {}\n\n", chunk_json(&id, d, "null", usage_first, extra)));
            }
            if final_usage {
                let id = if distinct { "chatcmpl-9999" } else { "chatcmpl-0000" };
                let u = r#"{"prompt_tokens":5,"completion_tokens":7}"#;
                body.push_str(&format!(
                    "data: {{\"id\":\"{id}\",\"choices\":[],\"usage\":{u}}}\n\n"
                ));
            }
            body.push_str("data: [DONE]\n\n");
            body.into_bytes()
        };
        let (shared, distinct) = (render(false), render(true));
        let a = run(OpenAiChat, true, strip, &split_at_points(&shared, points.clone()));
        let b = run(OpenAiChat, true, strip, &split_at_points(&distinct, points));
        prop_assert_eq!(a.usage, b.usage);
        prop_assert_eq!(a.text, b.text);
        prop_assert_eq!(a.events, b.events);
        prop_assert_eq!(a.complete, b.complete);
        prop_assert_eq!(a.error, b.error);
        prop_assert_eq!(a.out.len(), b.out.len());
    }
}

#[test]
fn openai_cached_prompt_tokens_count_once_and_anthropic_cache_tokens_on_top() {
    let openai = Usage {
        prompt_tokens: Some(1000),
        completion_tokens: Some(50),
        cache_read_tokens: Some(800),
        cache_write_tokens: None,
    };
    // OpenAI's cached_tokens are part of prompt_tokens: 1000 input tokens, not 1800.
    assert_eq!(openai.input_tokens(WireFormat::OpenAiChat), Some(1000));
    assert_eq!(openai.uncached_input_tokens(WireFormat::OpenAiChat), 200);
    assert_eq!(openai.total_tokens(WireFormat::OpenAiChat), 1050);
    let anthropic = Usage {
        prompt_tokens: Some(10),
        completion_tokens: Some(50),
        cache_read_tokens: Some(800),
        cache_write_tokens: Some(100),
    };
    // Anthropic's input_tokens is the uncached part; reads and writes come on top.
    assert_eq!(
        anthropic.input_tokens(WireFormat::AnthropicMessages),
        Some(910)
    );
    assert_eq!(
        anthropic.uncached_input_tokens(WireFormat::AnthropicMessages),
        10
    );
    assert_eq!(anthropic.total_tokens(WireFormat::AnthropicMessages), 960);
    assert_eq!(Usage::default().input_tokens(WireFormat::OpenAiChat), None);
}

#[test]
fn nothing_scanned_is_usage_source_none_and_an_unreported_body_is_estimated() {
    let (u, s) = final_usage(None, 100);
    assert_eq!((u, s), (Usage::default(), Source::None));
    let mut scanner = UsageScanner::new(WireFormat::OpenAiChat, false, false);
    let _ = scanner.feed_bytes(&Bytes::from_static(
        br#"{"choices":[{"message":{"content":"hello world"}}]}"#,
    ));
    let (u, s) = final_usage(Some(&scanner), 100);
    assert_eq!(s, Source::Estimated);
    assert_eq!(
        u.prompt_tokens,
        Some(25),
        "100 request bytes bound the prompt"
    );
    assert!(u.completion_tokens.is_some_and(|n| n > 0));
}

// ---- cost reporting (`report_cost`, issue 16) ----

fn test_price() -> crate::engine::pricing::Price {
    crate::engine::pricing::Price {
        input: 150_000,
        output: 600_000,
        cache_read: 75_000,
        cache_write: 187_500,
        max_output_tokens: None,
    }
}

/// Feeds `chunks` to a reporting scanner (elapsed 12.25 ms) and collects what the client gets.
fn run_report(f: &Fixture, charge: Charge, chunks: &[&[u8]]) -> (Vec<u8>, Option<Reported>) {
    let mut s = UsageScanner::new(f.format, f.sse, false).with_report(charge, 100);
    s.set_elapsed_ms(12.25);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let fed = if i % 2 == 0 {
            s.feed(c)
        } else {
            s.feed_bytes(&Bytes::copy_from_slice(c))
        };
        match fed {
            Feed::Pass => out.extend_from_slice(c),
            Feed::Replace(b) => out.extend_from_slice(&b),
        }
    }
    if let Some(b) = s.finish() {
        out.extend_from_slice(&b);
    }
    assert_eq!(s.finish(), None, "{}: finish is idempotent", f.name);
    (out, s.cost_report())
}

/// The fixtures whose usage object gets the members: every JSON body but embeddings, and the
/// streams that carry a final usage event.
fn reported_fixture(f: &Fixture) -> bool {
    f.format != OpenAiEmbeddings
        && !f.usage.is_empty()
        && f.complete
        && (!f.sse || f.usage.completion_tokens.is_some())
}

/// The JSON value holding the members in `out`: the body itself, or the data of the event
/// that has them.
fn edited_json(f: &Fixture, out: &[u8], members: &str) -> serde_json::Value {
    let doc: &[u8] = if f.sse {
        let k = memchr::memmem::find(out, members.as_bytes()).unwrap_or(0);
        let start = out[..k]
            .windows(5)
            .rposition(|w| w == b"data:")
            .map_or(0, |p| p + 5);
        let end = k + memchr::memchr2(b'\r', b'\n', &out[k..]).unwrap_or(out.len() - k);
        &out[start..end]
    } else {
        out
    };
    serde_json::from_slice(doc).unwrap_or_else(|e| panic!("{}: not JSON ({e})", f.name))
}

#[test]
fn report_mode_adds_cost_and_duration_to_exactly_the_usage_object_and_changes_nothing_else() {
    let mut edited = 0;
    for f in FIXTURES {
        let plain = {
            let mut s = UsageScanner::new(f.format, f.sse, false);
            s.feed(f.body);
            s.finish();
            s
        };
        let (usage, source) = final_usage(Some(&plain), 100);
        let cost = test_price().cost(&usage, f.format);
        let (out, report) = run_report(f, Charge::Priced(test_price()), &[f.body]);
        if !reported_fixture(f) {
            assert_eq!(out, f.body, "{}: no usage object, no edit", f.name);
            assert_eq!(report, None, "{}", f.name);
            continue;
        }
        edited += 1;
        let want = Reported {
            usage,
            source,
            cost: Some(cost),
            duration_ms: 12.25,
        };
        assert_eq!(report, Some(want), "{}: what the client was told", f.name);
        let members = want.members();
        assert!(members.contains(&format!("\"cost\":{}", cost.usd_exact())));
        // Exactly once, after a comma, and taking it out gives the provider's bytes back.
        let at = memchr::memmem::find_iter(&out, members.as_bytes()).collect::<Vec<_>>();
        assert_eq!(at.len(), 1, "{}: {}", f.name, String::from_utf8_lossy(&out));
        let k = at[0];
        assert_eq!(out[k - 1], b',', "{}", f.name);
        let mut back = out[..k - 1].to_vec();
        back.extend_from_slice(&out[k + members.len()..]);
        assert_eq!(back, f.body, "{}: every other byte is untouched", f.name);
        let v = edited_json(f, &out, &members);
        let u = if f.format == OpenAiResponses && f.sse {
            &v["response"]["usage"]
        } else {
            &v["usage"]
        };
        assert_eq!(u["cost"].as_f64(), Some(cost.as_usd()), "{}", f.name);
        assert_eq!(u["duration_ms"].as_f64(), Some(12.25), "{}", f.name);
    }
    assert_eq!(
        edited, 9,
        "4 JSON bodies and 5 streams carry a usage object"
    );
}

#[test]
fn report_mode_split_at_every_offset_and_with_any_line_ends_gives_the_same_output() {
    for f in FIXTURES.iter().filter(|f| reported_fixture(f)) {
        let variants = if f.sse {
            vec![f.body.to_vec(), crlf(f.body), cr_only(f.body)]
        } else {
            vec![f.body.to_vec()]
        };
        for body in &variants {
            let want = run_report(f, Charge::Priced(test_price()), &[body]);
            assert!(want.1.is_some(), "{}: edited", f.name);
            assert_eq!(
                want.0.len(),
                body.len() + want.1.map_or(0, |r| r.members().len() + 1)
            );
            for k in 0..=body.len() {
                let (a, b) = body.split_at(k);
                let got = run_report(f, Charge::Priced(test_price()), &[a, b]);
                assert_eq!(got, want, "{} split at {k}", f.name);
            }
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(run_report(f, Charge::Priced(test_price()), &bytes), want);
        }
    }
}

#[test]
fn an_unpriced_model_reports_a_null_cost_and_a_free_answer_zero() {
    for f in FIXTURES.iter().filter(|f| reported_fixture(f)) {
        let (out, r) = run_report(f, Charge::Unpriced, &[f.body]);
        assert_eq!(r.map(|r| r.cost), Some(None), "{}", f.name);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains(r#""cost":null,"duration_ms":12.250"#),
            "{}",
            f.name
        );
        let (out, r) = run_report(f, Charge::Free, &[f.body]);
        assert_eq!(r.map(|r| r.cost), Some(Some(Nanos::ZERO)), "{}", f.name);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains(r#""cost":0.0,"duration_ms":12.250"#),
            "{}",
            f.name
        );
    }
}

#[test]
fn report_mode_leaves_embeddings_and_stripped_streams_alone() {
    for f in FIXTURES {
        let strip = f.sse && matches!(f.format, OpenAiChat | OpenAiCompletions);
        let s = UsageScanner::new(f.format, f.sse, strip).with_report(Charge::Free, 0);
        let untouched = f.format == OpenAiEmbeddings || strip;
        assert_eq!(s.edits_body(), !untouched, "{}", f.name);
        if strip {
            // The client did not ask for usage: it gets no usage chunk, so no cost either.
            let mut s = s;
            let mut out = match s.feed(f.body) {
                Feed::Pass => f.body.to_vec(),
                Feed::Replace(b) => b.to_vec(),
            };
            out.extend_from_slice(&s.finish().unwrap_or_default());
            assert_eq!(out, expected_stripped(f.body, b"\n\n"), "{}", f.name);
            assert_eq!(s.cost_report(), None, "{}", f.name);
        }
    }
}

#[test]
fn a_json_body_too_big_to_hold_is_passed_on_unedited() {
    let f = &FIXTURES[0];
    let mut body = br#"{"pad":""#.to_vec();
    body.resize(DEFAULT_MAX_EVENT_BYTES + 10, b'x');
    body.extend_from_slice(br#"","usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
    let chunks: Vec<&[u8]> = body.chunks(1 << 20).collect();
    let (out, r) = run_report(f, Charge::Free, &chunks);
    assert_eq!(out, body);
    assert_eq!(r, None, "nothing was edited, nothing reported");
}

/// The cursor's reading of a usage object equals serde's, for every shape a provider (or a
/// broken one) could send: known and unknown keys, duplicates, every JSON value type in every
/// place, counts past `u64`, floats, negatives, nested details, whitespace.
mod usage_reader {
    use super::*;
    use crate::engine::usage::wire::WireUsage;

    const KEYS: &[&str] = &[
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens",
        "output_tokens",
        "input_tokens_details",
        "output_tokens_details",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "total_tokens",
        "prompt\\u005ftokens",
    ];

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..100_000).prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            Just("18446744073709551616".to_string()),
            Just("-3".to_string()),
            Just("7.0".to_string()),
            Just("7.5".to_string()),
            Just("1e2".to_string()),
            Just("012".to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("\"12\"".to_string()),
            Just("[1,2]".to_string()),
            Just("{}".to_string()),
        ]
    }

    fn object(depth: u32) -> BoxedStrategy<String> {
        let value = if depth == 0 {
            scalar().boxed()
        } else {
            prop_oneof![3 => scalar(), 1 => object(depth - 1)].boxed()
        };
        (
            prop::collection::vec((prop::sample::select(KEYS), value), 0..6),
            prop::sample::select(&["", " ", "\n  "][..]),
        )
            .prop_map(|(members, ws)| {
                let inner: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}"))
                    .collect();
                format!("{{{}{ws}}}", inner.join(","))
            })
            .boxed()
    }

    /// What a reading means for each format: the usage and the reasoning tokens.
    type Meaning = Vec<(Usage, Option<u64>)>;

    fn seen(r: &Result<Option<WireUsage>, ()>) -> Option<Option<Meaning>> {
        r.as_ref().ok().map(|u| {
            u.as_ref().map(|u| {
                [OpenAiChat, OpenAiResponses, AnthropicMessages]
                    .iter()
                    .map(|f| u.to_usage(*f))
                    .collect()
            })
        })
    }

    proptest! {
        #[test]
        fn reads_every_usage_object_as_serde_does(doc in prop_oneof![
            4 => object(2),
            1 => scalar(),
            1 => object(1).prop_map(|o| format!("{o} x")),
            1 => object(1).prop_map(|o| o[..o.len() / 2].to_string()),
        ]) {
            let fast = WireUsage::read(doc.as_bytes());
            let serde = serde_json::from_slice::<Option<WireUsage>>(doc.as_bytes()).map_err(drop);
            prop_assert_eq!(seen(&fast), seen(&serde), "{}", doc);
        }
    }

    #[test]
    fn the_common_shapes_are_read() {
        let chat = br#"{"prompt_tokens":29,"completion_tokens":16,"total_tokens":45,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":2,"audio_tokens":0}}"#;
        let w = WireUsage::read(chat).unwrap().unwrap();
        assert_eq!(
            w.to_usage(OpenAiChat),
            (u(Some(29), Some(16), Some(3), None), Some(2))
        );
        let anthropic = br#"{"input_tokens":10,"cache_creation_input_tokens":4,"cache_read_input_tokens":5,"output_tokens":7}"#;
        let w = WireUsage::read(anthropic).unwrap().unwrap();
        assert_eq!(
            w.to_usage(AnthropicMessages),
            (u(Some(10), Some(7), Some(5), Some(4)), None)
        );
        assert!(WireUsage::read(b"null").unwrap().is_none());
        assert!(WireUsage::read(br#"{"prompt_tokens":1,"prompt_tokens":2}"#).is_err());
    }
}
