//! Cost reporting (a project's `report_cost`): the two members Tollgate adds to a response's
//! usage object, `"cost"` (the amount charged, USD) and `"duration_ms"`, and where they go.
//!
//! The bytes are edited, never re-serialised: the members are inserted just inside the usage
//! object, after its last member, and every other byte of the body or event stays as the
//! provider sent it. [`insert_members`] finds the object in a whole JSON document;
//! [`annotate_event`] does the same inside the one `data:` line of a raw SSE event.
//!
//! The walk below only needs to tell strings, containers and scalars apart (the provider's JSON
//! is not validated beyond that); a key written with escapes (`"\u0075sage"`) is not
//! recognised, as in the scanner. Nothing here allocates except the output, nothing panics, and
//! nesting is skipped with a counter, not recursion (recursion is bounded by the path, ≤ 2).
//!
//! Core module: no pingora, no tokio, no I/O, no clock (the caller passes the duration).

use std::fmt::Write as _;

use memchr::memchr2;

use super::{Source, Usage};
use crate::engine::pricing::{Nanos, Price};

/// What a reported call is charged, decided at admission.
#[derive(Clone, Debug)]
pub enum Charge {
    /// A priced model: [`Price::cost`] of the usage, as the ledger charges it.
    Priced(Price),
    /// No price is known: the cost is unknown (`"cost": null`), as on the record.
    Unpriced,
    /// Nothing is charged (a cache hit): `"cost": 0.0`.
    Free,
}

/// What one response told its client, and so what the request is charged and recorded with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reported {
    pub usage: Usage,
    pub source: Source,
    /// `None`: unpriced.
    pub cost: Option<Nanos>,
    /// The call's duration as Tollgate measured it when it wrote the usage.
    pub duration_ms: f64,
}

impl Reported {
    /// The members as JSON text, without braces: `"cost":0.0001645,"duration_ms":12.250`. The
    /// cost in the admin JSON's `cost_usd` form (every nano-dollar), the duration in its
    /// `latency_ms` form (three decimals), so a client can compare them with the record.
    pub fn members(&self) -> String {
        let mut s = String::with_capacity(48);
        s.push_str(r#""cost":"#);
        match self.cost {
            Some(c) => s.push_str(&c.usd_exact()),
            None => s.push_str("null"),
        }
        s.push_str(r#","duration_ms":"#);
        if self.duration_ms.is_finite() {
            let _ = write!(s, "{:.3}", self.duration_ms);
        } else {
            s.push_str("null");
        }
        s
    }
}

/// Where the usage object sits: under these keys from the top of the document.
pub(crate) const TOP_USAGE: &[&[u8]] = &[b"usage"];
/// A Responses API event: `response.usage`.
pub(crate) const RESPONSE_USAGE: &[&[u8]] = &[b"response", b"usage"];

/// `doc` with `members` inserted into the object at `path` (after its last member, or right
/// after `{` when it is empty). `None` when there is no object there (absent, `null`, or not
/// an object) or the document is cut short before it ends.
pub fn insert_members(doc: &[u8], path: &[&[u8]], members: &str) -> Option<Vec<u8>> {
    let (open, close) = Walk { b: doc, i: 0 }.object_at(path)?;
    let inner = doc.get(open + 1..close)?;
    let (at, comma) = match inner.iter().rposition(|c| !c.is_ascii_whitespace()) {
        Some(k) => (open + 1 + k + 1, true),
        None => (open + 1, false),
    };
    let mut v = Vec::with_capacity(doc.len() + members.len() + 1);
    v.extend_from_slice(&doc[..at]);
    if comma {
        v.push(b',');
    }
    v.extend_from_slice(members.as_bytes());
    v.extend_from_slice(&doc[at..]);
    Some(v)
}

/// A raw SSE event (its lines and the blank line that ended it, exactly as they came) with
/// `members` inserted into the object at `path` of its data. Only an event with exactly one
/// `data:` line is edited (every provider sends one); `None` otherwise, or when its data has
/// no object there.
pub fn annotate_event(raw: &[u8], path: &[&[u8]], members: &str) -> Option<Vec<u8>> {
    let mut value: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < raw.len() {
        let end = memchr2(b'\r', b'\n', &raw[i..]).map_or(raw.len(), |k| i + k);
        let line = &raw[i..end];
        if line == b"data" || line.starts_with(b"data:") {
            if value.is_some() {
                return None;
            }
            let start = (i + 5).min(end);
            let start = start + usize::from(raw.get(start) == Some(&b' ') && start < end);
            value = Some((start, end));
        }
        i = end;
        match raw.get(i) {
            Some(b'\r') => {
                i += 1;
                if raw.get(i) == Some(&b'\n') {
                    i += 1;
                }
            }
            Some(_) => i += 1,
            None => {}
        }
    }
    let (a, b) = value?;
    let edited = insert_members(&raw[a..b], path, members)?;
    let mut v = Vec::with_capacity(raw.len() + members.len() + 1);
    v.extend_from_slice(&raw[..a]);
    v.extend_from_slice(&edited);
    v.extend_from_slice(&raw[b..]);
    Some(v)
}

/// A cursor over a JSON document.
struct Walk<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Walk<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// At a `"`: the string's raw contents; the cursor ends past its closing quote.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.i += 1;
        let start = self.i;
        loop {
            let k = memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            self.i += k;
            if self.b[self.i] == b'\\' {
                self.i += 2;
                continue;
            }
            let s = &self.b[start..self.i];
            self.i += 1;
            return Some(s);
        }
    }

    /// Past one value of any kind.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
            }
        }
        Some(())
    }

    /// In the object at the cursor: the offsets of the `{` and `}` of the object under `path`.
    fn object_at(&mut self, path: &[&[u8]]) -> Option<(usize, usize)> {
        let (first, rest) = path.split_first()?;
        self.ws();
        if self.peek()? != b'{' {
            return None;
        }
        self.i += 1;
        loop {
            self.ws();
            if self.peek()? != b'"' {
                // `}` (the key is not there) or not JSON.
                return None;
            }
            let key = self.string()?;
            self.ws();
            if self.peek()? != b':' {
                return None;
            }
            self.i += 1;
            self.ws();
            if key == *first {
                if !rest.is_empty() {
                    return self.object_at(rest);
                }
                if self.peek()? != b'{' {
                    return None;
                }
                let open = self.i;
                self.skip_value()?;
                return Some((open, self.i - 1));
            }
            self.skip_value()?;
            self.ws();
            if self.peek()? != b',' {
                return None;
            }
            self.i += 1;
        }
    }
}

impl Charge {
    /// What `usage` costs: [`Price::cost`], the one formula the ledger charges with.
    pub fn cost(&self, usage: &Usage, format: super::WireFormat) -> Option<Nanos> {
        match self {
            Charge::Priced(p) => Some(p.cost(usage, format)),
            Charge::Unpriced => None,
            Charge::Free => Some(Nanos::ZERO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = r#""cost":0.5,"duration_ms":1.000"#;

    fn ins(doc: &str, path: &[&[u8]]) -> Option<String> {
        insert_members(doc.as_bytes(), path, M).map(|v| String::from_utf8(v).unwrap_or_default())
    }

    #[test]
    fn members_go_after_the_last_member_of_the_top_level_usage_object() {
        assert_eq!(
            ins(
                r#"{"id":"x","usage":{"a":1,"b":{"c":2}},"z":[1,{"usage":3}]}"#,
                TOP_USAGE
            )
            .as_deref(),
            Some(
                r#"{"id":"x","usage":{"a":1,"b":{"c":2},"cost":0.5,"duration_ms":1.000},"z":[1,{"usage":3}]}"#
            )
        );
    }

    #[test]
    fn pretty_printed_bodies_keep_their_whitespace_and_empty_objects_get_no_comma() {
        assert_eq!(
            ins("{\n  \"usage\": {\n    \"a\": 1\n  }\n}", TOP_USAGE).as_deref(),
            Some("{\n  \"usage\": {\n    \"a\": 1,\"cost\":0.5,\"duration_ms\":1.000\n  }\n}")
        );
        assert_eq!(
            ins(r#"{"usage": { }}"#, TOP_USAGE).as_deref(),
            Some(r#"{"usage": {"cost":0.5,"duration_ms":1.000 }}"#)
        );
    }

    #[test]
    fn a_nested_usage_or_one_inside_strings_is_not_the_top_level_one() {
        // `usage` as a value, inside a string with escaped quotes, and nested deeper.
        let doc = r#"{"note":"the \"usage\":{} key","m":{"usage":{"x":1}},"usage":{"k":2}}"#;
        assert_eq!(
            ins(doc, TOP_USAGE).as_deref(),
            Some(
                r#"{"note":"the \"usage\":{} key","m":{"usage":{"x":1}},"usage":{"k":2,"cost":0.5,"duration_ms":1.000}}"#
            )
        );
        assert_eq!(
            ins(
                r#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":3}}}"#,
                RESPONSE_USAGE
            )
            .as_deref(),
            Some(
                r#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":3,"cost":0.5,"duration_ms":1.000}}}"#
            )
        );
    }

    #[test]
    fn no_object_no_edit() {
        for doc in [
            r#"{"usage":null}"#,
            r#"{"id":1}"#,
            r#"{"usage":[1]}"#,
            r#"{"usage":{"a":1"#,
            r#"{"usage""#,
            r#"[{"usage":{}}]"#,
            "",
            "{",
            r#"{"a":"\"#,
            r#"{"response":null,"usage":{}}"#,
        ] {
            let path = if doc.contains("response") {
                RESPONSE_USAGE
            } else {
                TOP_USAGE
            };
            assert_eq!(ins(doc, path), None, "{doc:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_body_is_handled_without_panicking() {
        let doc =
            br#"{"a":"x\\\"y","b":[{"c":[]},-1.5e3,true,null],"usage":{"p":1,"q":{"r":[2]}}}"#;
        for n in 0..=doc.len() {
            let got = insert_members(&doc[..n], TOP_USAGE, M);
            if n == doc.len() {
                assert!(got.is_some());
            }
        }
    }

    #[test]
    fn an_event_gets_the_members_in_its_one_data_line_and_keeps_its_other_lines() {
        for (raw, want) in [
            (
                "event: message_delta\ndata: {\"usage\":{\"o\":1}}\n\n",
                "event: message_delta\ndata: {\"usage\":{\"o\":1,\"cost\":0.5,\"duration_ms\":1.000}}\n\n",
            ),
            (
                "data:{\"usage\":{}}\r\n\r\n",
                "data:{\"usage\":{\"cost\":0.5,\"duration_ms\":1.000}}\r\n\r\n",
            ),
            (
                ": comment\rdata: {\"usage\":{\"o\":1}}\r\r",
                ": comment\rdata: {\"usage\":{\"o\":1,\"cost\":0.5,\"duration_ms\":1.000}}\r\r",
            ),
            (
                "\ndata: {\"usage\":{\"o\":1}}",
                "\ndata: {\"usage\":{\"o\":1,\"cost\":0.5,\"duration_ms\":1.000}}",
            ),
        ] {
            let got = annotate_event(raw.as_bytes(), TOP_USAGE, M).map(String::from_utf8);
            assert_eq!(got, Some(Ok(want.to_string())), "{raw:?}");
        }
        for raw in [
            "data: {\"usage\":\ndata: {}}\n\n",
            "event: x\n\n",
            "data: {\"usage\":null}\n\n",
            "data\n\n",
        ] {
            assert_eq!(
                annotate_event(raw.as_bytes(), TOP_USAGE, M),
                None,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn members_carry_every_nano_dollar_and_null_for_an_unknown_cost() {
        let r = |cost, duration_ms| Reported {
            usage: Usage::default(),
            source: Source::Reported,
            cost,
            duration_ms,
        };
        assert_eq!(
            r(Some(Nanos(164_500)), 12.25).members(),
            r#""cost":0.0001645,"duration_ms":12.250"#
        );
        assert_eq!(
            r(Some(Nanos::ZERO), 0.0).members(),
            r#""cost":0.0,"duration_ms":0.000"#
        );
        assert_eq!(r(None, 3.0).members(), r#""cost":null,"duration_ms":3.000"#);
    }
}
