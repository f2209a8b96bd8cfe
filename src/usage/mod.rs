//! Placeholder until the incremental usage scanner lands (helper work in progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat { OpenAiChat, OpenAiCompletions, OpenAiEmbeddings, OpenAiResponses, AnthropicMessages }
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
}
