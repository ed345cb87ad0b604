//! The formatting stage: a record becomes the exact text the reward model was trained on.
//!
//! For now the manifest's `format.template` with `{prompt}` and `{response}` placeholders; `{"text"}`
//! records are taken as they are. Both placeholders are substituted in one left-to-right pass, so braces
//! inside a prompt or response are never re-interpreted.

use std::borrow::Cow;

use crate::record::Input;

/// A text template with `{prompt}` and `{response}` placeholders.
#[derive(Debug, Clone)]
pub struct Formatter {
    template: String,
}

impl Formatter {
    /// A formatter for `template`.
    pub fn new(template: impl Into<String>) -> Self {
        Formatter {
            template: template.into(),
        }
    }

    /// The text to tokenize for `input` (borrowed when the input is already text).
    pub fn format<'a>(&self, input: &'a Input) -> Cow<'a, str> {
        Cow::Owned(match input {
            Input::Text(text) => return Cow::Borrowed(text),
            Input::Pair { prompt, response } => {
                let mut out = String::with_capacity(self.template.len() + prompt.len() + response.len());
                let mut rest = self.template.as_str();
                while let Some(start) = rest.find('{') {
                    out.push_str(&rest[..start]);
                    let tail = &rest[start..];
                    if let Some(after) = tail.strip_prefix("{prompt}") {
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
                out
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_placeholders_once() {
        let f = Formatter::new("<|user|>{prompt}<|assistant|>{response}<|end|>");
        let input = Input::pair("say {response}", "{prompt}!");
        assert_eq!(f.format(&input), "<|user|>say {response}<|assistant|>{prompt}!<|end|>");
    }

    #[test]
    fn text_records_are_untouched() {
        let f = Formatter::new("X{prompt}{response}");
        assert_eq!(f.format(&Input::text("{prompt} raw")), "{prompt} raw");
    }

    #[test]
    fn other_braces_are_literal() {
        let f = Formatter::new("{ {prompt} }{response}{");
        assert_eq!(f.format(&Input::pair("p", "r")), "{ p }r{");
    }
}
