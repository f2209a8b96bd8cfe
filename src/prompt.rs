//! TEMPORARY stub until the prompt-text module lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
}
pub fn for_each_text(_format: Format, _body: &[u8], _f: &mut dyn FnMut(&str)) -> usize {
    0
}
pub fn prompt_tokens_upper_bound(_format: Format, body: &[u8]) -> u64 {
    body.len() as u64
}
