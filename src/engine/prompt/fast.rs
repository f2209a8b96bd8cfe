//! The prompt walk in one pass over the bytes of a body already known to be UTF-8, without
//! serde: the same schema ([`Node`]) and the same counting ([`Acc`]) as the serde walk in the
//! parent module, which stays the reference. The JSON is read by [`Cursor`]
//! (`engine/cursor.rs`); this file is the walk's own steps.
//!
//! Why: the gateway walks every prompt it forwards, and agents send 40–120 KB of them per
//! turn. serde_json's walk validates each string's UTF-8 again and scans strings eight bytes
//! at a time; here the body is validated once by the caller and a string's end is found with
//! `memchr2`. A text without escapes is passed as a slice of the body, with its offset; one
//! with escapes is unescaped into one reused buffer.
//!
//! It declines ([`Bail`]) whatever the reference might read differently (the cursor's rules,
//! and anything after the body). The cursor is at least as strict as serde_json at every point,
//! so whatever the walk passed on before declining is what the reference reads first; the
//! parent then runs the reference walk on the same body.
//!
//! Pure: no pingora, no tokio, no I/O.

use std::borrow::Cow;
use std::ops::Range;

pub(super) use crate::engine::cursor::Bail;
use crate::engine::cursor::{Cursor, Str};

use super::{Acc, Media, MemberFn, Node, Tag, K};

/// Walk `body`, which must be one JSON object of format `node`, calling `member` with each
/// top-level member's key and value range.
pub(super) fn walk(
    node: Node,
    body: &str,
    acc: &mut Acc<'_>,
    member: &mut dyn FnMut(&str, Range<usize>),
) -> Result<(), Bail> {
    let mut p = Cursor::new(body);
    p.ws();
    if p.peek() != Some(b'{') {
        return Err(Bail);
    }
    p.object(node, acc, Some(member))?;
    if p.at_end() {
        Ok(())
    } else {
        Err(Bail)
    }
}

/// The walk's own steps; the JSON reading is the cursor's.
impl<'b> Cursor<'b> {
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
                node.string(self.text(&s), s.at(), acc);
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
        mut member: Option<MemberFn<'_>>,
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
}

#[cfg(test)]
mod tests;
