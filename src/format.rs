//! The formatting stage: a record becomes the exact text the reward model was trained on.
//!
//! - `{"text"}` records are taken as they are and tokenized with the manifest's `add_special_tokens`.
//! - `{"messages"}` records are rendered by the model's chat template ([`crate::chat`]) and tokenized without
//!   added special tokens (the template writes them), as `apply_chat_template` does.
//! - `{"prompt", "response"}` records become a user turn and an assistant turn under the chat template when the
//!   manifest says the model uses it (`format.chat_template`), else fill the text template's `{prompt}` and
//!   `{response}` placeholders in one left-to-right pass (braces inside a prompt or response are never
//!   re-interpreted).
//!
//! Each formatted text also carries the byte ranges of its prompt content (every message but the last), which is
//! all that left truncation may drop: the template's own tokens and the response are never cut.

use std::{borrow::Cow, ops::Range};

use crate::{
    chat::{ChatTemplate, Message},
    record::Input,
};

/// A record's text, ready to tokenize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatted<'a> {
    pub text: Cow<'a, str>,
    /// Byte ranges of prompt content in `text`, earliest first: what left truncation may drop.
    pub prompt: Vec<Range<usize>>,
    /// Whether the tokenizer adds its special tokens (false for chat-template output).
    pub add_special_tokens: bool,
}

/// The formatting stage for one model.
#[derive(Debug)]
pub struct Formatter {
    template: String,
    chat: Option<ChatTemplate>,
    pairs_use_chat: bool,
    add_special_tokens: bool,
}

impl Formatter {
    /// A formatter for the text `template`; texts are tokenized with `add_special_tokens`.
    pub fn new(template: impl Into<String>, add_special_tokens: bool) -> Self {
        Formatter {
            template: template.into(),
            chat: None,
            pairs_use_chat: false,
            add_special_tokens,
        }
    }

    /// Renders `messages` records with `chat`, and `prompt`/`response` records too when `for_pairs`.
    pub fn with_chat_template(mut self, chat: ChatTemplate, for_pairs: bool) -> Self {
        self.chat = Some(chat);
        self.pairs_use_chat = for_pairs;
        self
    }

    /// True when `prompt`/`response` records go through the chat template.
    pub fn pairs_use_chat(&self) -> bool {
        self.pairs_use_chat && self.chat.is_some()
    }

    /// The text to tokenize for `input` (borrowed when the input is already text).
    ///
    /// # Errors
    /// A `messages` record for a model without a chat template, or the template's own error (e.g. roles that
    /// do not alternate), as a message for that record.
    pub fn format<'a>(&self, input: &'a Input) -> Result<Formatted<'a>, String> {
        match input {
            Input::Text(text) => Ok(Formatted {
                text: Cow::Borrowed(text),
                prompt: std::iter::once(0..text.len()).collect(),
                add_special_tokens: self.add_special_tokens,
            }),
            Input::Pair { prompt, response } if self.pairs_use_chat() => self.render(&[
                Message::new("user", prompt.as_str()),
                Message::new("assistant", response.as_str()),
            ]),
            Input::Pair { prompt, response } => Ok(self.fill(prompt, response)),
            Input::Messages(messages) => self.render(messages),
        }
    }

    fn render(&self, messages: &[Message]) -> Result<Formatted<'static>, String> {
        let chat = self.chat.as_ref().ok_or(
            "`messages` records need a chat template and this model has none (no chat_template.jinja or \
             tokenizer_config.json chat_template); send `prompt` + `response` or `text`",
        )?;
        let text = chat.render(messages)?;
        let prompt = locate_prompt(&text, messages);
        Ok(Formatted {
            text: Cow::Owned(text),
            prompt,
            add_special_tokens: false,
        })
    }

    fn fill(&self, prompt: &str, response: &str) -> Formatted<'static> {
        let mut out = String::with_capacity(self.template.len() + prompt.len() + response.len());
        let mut spans = Vec::new();
        let mut rest = self.template.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            if let Some(after) = tail.strip_prefix("{prompt}") {
                spans.push(out.len()..out.len() + prompt.len());
                out.push_str(prompt);
                rest = after;
            } else if let Some(after) = tail.strip_prefix("{response}") {
                out.push_str(response);
                rest = after;
            } else {
                out.push('{');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        Formatted {
            text: Cow::Owned(out),
            prompt: spans,
            add_special_tokens: self.add_special_tokens,
        }
    }
}

/// Where each message before the last appears in the rendered text, found in order (templates copy content
/// verbatim or trimmed). Content the template rewrote is not found and so is never dropped.
fn locate_prompt(text: &str, messages: &[Message]) -> Vec<Range<usize>> {
    let Some((_, prompt)) = messages.split_last() else {
        return Vec::new();
    };
    let mut spans = Vec::new();
    let mut cursor = 0;
    for m in prompt {
        let content = m.content.trim();
        if content.is_empty() {
            continue;
        }
        if let Some(at) = text[cursor..].find(content) {
            let start = cursor + at;
            spans.push(start..start + content.len());
            cursor = start + content.len();
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn text(f: &Formatter, input: &Input) -> String {
        f.format(input).unwrap().text.into_owned()
    }

    #[test]
    fn fills_placeholders_once() {
        let f = Formatter::new("<|user|>{prompt}<|assistant|>{response}<|end|>", true);
        let input = Input::pair("say {response}", "{prompt}!");
        let got = f.format(&input).unwrap();
        assert_eq!(got.text, "<|user|>say {response}<|assistant|>{prompt}!<|end|>");
        assert_eq!(&got.text[got.prompt[0].clone()], "say {response}");
        assert!(got.add_special_tokens);
    }

    #[test]
    fn text_records_are_untouched() {
        let f = Formatter::new("X{prompt}{response}", true);
        assert_eq!(text(&f, &Input::text("{prompt} raw")), "{prompt} raw");
    }

    #[test]
    fn other_braces_are_literal() {
        let f = Formatter::new("{ {prompt} }{response}{", true);
        assert_eq!(text(&f, &Input::pair("p", "r")), "{ p }r{");
    }

    #[test]
    fn chat_template_renders_pairs_and_messages_without_added_special_tokens() {
        let chat = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}".into(),
            BTreeMap::from([("bos_token".to_owned(), "<s>".to_owned())]),
        )
        .unwrap();
        let f = Formatter::new("{prompt}{response}", true).with_chat_template(chat, true);
        let pair = Input::pair("hi there", "yo");
        let got = f.format(&pair).unwrap();
        assert_eq!(got.text, "<s><user>hi there<assistant>yo");
        assert!(!got.add_special_tokens);
        assert_eq!(&got.text[got.prompt[0].clone()], "hi there");
        let conv = Input::messages(vec![
            Message::new("system", "be nice"),
            Message::new("user", "hi"),
            Message::new("assistant", "hi"),
        ]);
        let got = f.format(&conv).unwrap();
        let spans: Vec<&str> = got.prompt.iter().map(|r| &got.text[r.clone()]).collect();
        assert_eq!(spans, ["be nice", "hi"]);
        assert_eq!(got.prompt[1], 24..26, "the user's `hi`, not the assistant's");
    }

    #[test]
    fn messages_without_a_chat_template_is_a_record_error() {
        let f = Formatter::new("{prompt}{response}", true);
        let e = f.format(&Input::messages(vec![Message::new("user", "x")])).unwrap_err();
        assert!(e.contains("need a chat template"), "{e}");
    }
}
