//! Placeholder until the incremental usage scanner lands (helper work in progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    OpenAiChat,
    OpenAiCompletions,
    OpenAiEmbeddings,
    OpenAiResponses,
    AnthropicMessages,
}
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
}
pub enum Feed {
    Pass,
    Replace(bytes::Bytes),
}
pub struct UsageScanner;
impl UsageScanner {
    pub fn new(_f: WireFormat, _sse: bool, _strip: bool) -> Self {
        UsageScanner
    }
    pub fn feed(&mut self, _c: &[u8]) -> Feed {
        Feed::Pass
    }
    pub fn finish(&mut self) -> Option<bytes::Bytes> {
        None
    }
    pub fn usage(&self) -> Usage {
        Usage::default()
    }
    pub fn reported(&self) -> bool {
        false
    }
    pub fn estimated_completion_tokens(&self) -> u64 {
        0
    }
    pub fn stream_error(&self) -> Option<&str> {
        None
    }
}
