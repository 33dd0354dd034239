//! The parsed inference request that every scheduling decision is made from.

use std::borrow::Cow;

/// Request priority: higher is more important; below zero is sheddable.
pub type Priority = i32;

/// Which OpenAI-style API a request uses (from its path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ApiKind {
    /// `/v1/completions`
    #[default]
    Completions,
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/embeddings`
    Embeddings,
    /// `/v1/responses`
    Responses,
    /// `/v1/conversations`
    Conversations,
}

impl ApiKind {
    /// The API a request path names; anything unknown is treated as completions (as upstream).
    pub fn from_path(path: &str) -> Self {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            ApiKind::ChatCompletions
        } else if path.ends_with("/embeddings") {
            ApiKind::Embeddings
        } else if path.ends_with("/responses") {
            ApiKind::Responses
        } else if path.ends_with("/conversations") {
            ApiKind::Conversations
        } else {
            ApiKind::Completions
        }
    }
}

/// One chat message, with content parts flattened to their text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The message text (text content parts joined with `\n`).
    pub content: String,
}

/// The part of a request a model server turns into prompt tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Prompt {
    /// No prompt (e.g. a body-less request).
    #[default]
    None,
    /// A plain text prompt (completions, embeddings, responses input as text).
    Text(String),
    /// Chat messages in order.
    Messages(Vec<ChatMessage>),
}

impl Prompt {
    /// The text that prefix-cache hashing reads, in prompt order.
    ///
    /// Completions hash the prompt as sent. Chat requests hash each message as
    /// `<role>\n<content>\n` in order — a stable stand-in for the chat template that keeps a
    /// conversation's earlier turns a byte-exact prefix of its later requests (upstream hashes the
    /// JSON serialisation of the messages, which has the same prefix property).
    pub fn prefix_text(&self) -> Cow<'_, str> {
        match self {
            Prompt::None => Cow::Borrowed(""),
            Prompt::Text(t) => Cow::Borrowed(t),
            Prompt::Messages(msgs) => {
                let len = msgs.iter().map(|m| m.role.len() + m.content.len() + 2).sum();
                let mut s = String::with_capacity(len);
                for m in msgs {
                    s.push_str(&m.role);
                    s.push('\n');
                    s.push_str(&m.content);
                    s.push('\n');
                }
                Cow::Owned(s)
            }
        }
    }

    /// Length in bytes of [`prefix_text`](Self::prefix_text), without building it.
    pub fn text_len(&self) -> usize {
        match self {
            Prompt::None => 0,
            Prompt::Text(t) => t.len(),
            Prompt::Messages(msgs) => msgs.iter().map(|m| m.role.len() + m.content.len() + 2).sum(),
        }
    }
}

/// A request as the scheduler sees it: parsed once, immutable during scheduling.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferenceRequest {
    /// `x-request-id` (generated when the client sent none).
    pub request_id: String,
    /// The model name the client asked for.
    pub model: String,
    /// The model the request is sent to after rewrites (a base model or a LoRA adapter).
    pub target_model: String,
    /// Which API the request uses.
    pub api: ApiKind,
    /// The prompt.
    pub prompt: Prompt,
    /// Whether the client asked for a streamed response.
    pub stream: bool,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`, if given.
    pub max_tokens: Option<u32>,
    /// `cache_salt`, if given: isolates prefix-cache reuse between tenants.
    pub cache_salt: Option<String>,
    /// Request headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The InferenceObjective named by `x-gateway-inference-objective`, if any.
    pub objective: Option<String>,
    /// Priority resolved from the objective (0 when none).
    pub priority: Priority,
    /// The objective's latency targets and placement (defaults when none).
    pub goals: crate::objective::ObjectiveGoals,
    /// Fairness flow (`x-gateway-inference-fairness-id`, default `default-flow`).
    pub fairness_id: String,
    /// Size of the request body in bytes.
    pub body_bytes: usize,
}

/// The fairness id used when a request names none.
pub const DEFAULT_FAIRNESS_ID: &str = "default-flow";

impl InferenceRequest {
    /// A request for `model` with a text prompt; the rest defaulted. Handy in tests and benches.
    pub fn text(model: &str, prompt: &str) -> Self {
        InferenceRequest {
            request_id: String::new(),
            model: model.to_string(),
            target_model: model.to_string(),
            prompt: Prompt::Text(prompt.to_string()),
            fairness_id: DEFAULT_FAIRNESS_ID.to_string(),
            body_bytes: prompt.len(),
            ..Default::default()
        }
    }

    /// True if this request may be shed under saturation (priority below zero).
    pub fn is_sheddable(&self) -> bool {
        self.priority < 0
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Estimated prompt tokens (4 characters per token, at least 1), the estimate upstream uses
    /// when no tokenizer is at hand.
    pub fn estimated_input_tokens(&self) -> u64 {
        let bytes = if self.body_bytes > 0 { self.body_bytes } else { self.prompt.text_len() };
        ((bytes as u64) / 4).max(1)
    }

    /// Estimated total tokens of work: input plus output, where output is `max_tokens` when
    /// given and otherwise 1.5 × input (upstream's estimate).
    pub fn estimated_tokens(&self) -> u64 {
        let input = self.estimated_input_tokens();
        let output = match self.max_tokens {
            Some(m) => u64::from(m).max(1),
            None => (input as f64 * 1.5).round() as u64,
        };
        input + output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_from_path() {
        assert_eq!(ApiKind::from_path("/v1/chat/completions"), ApiKind::ChatCompletions);
        assert_eq!(ApiKind::from_path("/v1/chat/completions?x=1"), ApiKind::ChatCompletions);
        assert_eq!(ApiKind::from_path("/v1/embeddings/"), ApiKind::Embeddings);
        assert_eq!(ApiKind::from_path("/v1/responses"), ApiKind::Responses);
        assert_eq!(ApiKind::from_path("/whatever"), ApiKind::Completions);
    }

    #[test]
    fn chat_prefix_text_extends_with_the_conversation() {
        let m1 = ChatMessage { role: "system".into(), content: "be brief".into() };
        let m2 = ChatMessage { role: "user".into(), content: "hi".into() };
        let short = Prompt::Messages(vec![m1.clone()]);
        let long = Prompt::Messages(vec![m1, m2]);
        assert!(long.prefix_text().starts_with(&*short.prefix_text()));
        assert_eq!(long.text_len(), long.prefix_text().len());
        assert_eq!(long.prefix_text(), "system\nbe brief\nuser\nhi\n");
    }

    #[test]
    fn token_estimates() {
        let mut r = InferenceRequest::text("m", &"x".repeat(400));
        assert_eq!(r.estimated_input_tokens(), 100);
        assert_eq!(r.estimated_tokens(), 250);
        r.max_tokens = Some(10);
        assert_eq!(r.estimated_tokens(), 110);
        r.priority = -1;
        assert!(r.is_sheddable());
        r.headers.push(("X-Foo".into(), "bar".into()));
        assert_eq!(r.header("x-foo"), Some("bar"));
    }
}
