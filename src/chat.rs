//! Chat templates: the model's own Jinja template, rendered with Hugging Face's semantics.
//!
//! `transformers`' `apply_chat_template` renders the template in a sandboxed Jinja environment with
//! `trim_blocks` and `lstrip_blocks`, the loop-control extension, `raise_exception`, `strftime_now`, a
//! `tojson` that does not HTML-escape (Python's `json.dumps`), the tokenizer's special tokens (`bos_token`,
//! `eos_token`, …) as variables, `add_generation_prompt`, and then tokenizes the text **without** adding special
//! tokens (the template writes them). This module does the same with `minijinja` (plus its Python-compatible
//! string and dict methods), so token ids equal `apply_chat_template(..., tokenize=True)`; the golden tests in
//! `tests/it/chat.rs` hold it to that for ChatML/Qwen, Llama-3, Gemma, Mistral and the bundled model.
//!
//! The template comes from `chat_template.jinja` when the model has one, else from `tokenizer_config.json`'s
//! `chat_template` (a string, or a list of named templates of which `default` is used), as transformers loads it.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use minijinja::{value::Kwargs, Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const NAME: &str = "chat_template";
/// Special-token variables transformers passes to the template (its `special_tokens_map`).
const SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
];

/// One chat message. Fields other than `role` and `content` (e.g. `name`, `tool_calls`) are passed to the
/// template unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    /// A message with only a role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
}

/// A compiled chat template with the tokenizer's special tokens.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    special: BTreeMap<String, Value>,
}

impl ChatTemplate {
    /// Loads the template the way transformers does: `chat_template.jinja` if given, else the `chat_template` of
    /// `tokenizer_config.json`; special tokens come from `tokenizer_config.json`. `Ok(None)` when neither file
    /// has a template.
    ///
    /// # Errors
    /// An unreadable or invalid file, or a template that does not compile; each names the file.
    pub fn load(config: Option<&Path>, jinja: Option<&Path>) -> Result<Option<ChatTemplate>> {
        let config_json = match config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::ManifestParse {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some((path, value))
            }
            None => None,
        };
        let (source, origin) = match jinja {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
                path.to_path_buf(),
            ),
            None => match config_json
                .as_ref()
                .and_then(|(p, v)| template_in_config(v).map(|t| (p, t)))
            {
                Some((path, Ok(t))) => (t, path.to_path_buf()),
                Some((path, Err(message))) => return Err(Error::model(path, message)),
                None => return Ok(None),
            },
        };
        let special = config_json.map(|(_, v)| special_tokens(&v)).unwrap_or_default();
        ChatTemplate::new(source, special)
            .map(Some)
            .map_err(|message| Error::model(origin, message))
    }

    /// Compiles `source` with the special tokens given as `name → token text` (`bos_token` → `<s>`, …).
    ///
    /// # Errors
    /// The template's syntax error, as text.
    pub fn new(source: String, special_tokens: BTreeMap<String, String>) -> std::result::Result<Self, String> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, without_generation_tags(&source))
            .map_err(|e| format!("chat template does not compile: {e:#}"))?;
        let mut special: BTreeMap<String, Value> =
            special_tokens.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
        special
            .entry("add_generation_prompt".into())
            .or_insert(Value::from(false));
        Ok(ChatTemplate { env, special })
    }

    /// Renders `messages` (with `add_generation_prompt = false`: the last message is the scored response).
    ///
    /// # Errors
    /// The template's own `raise_exception` message (e.g. roles that do not alternate) or a rendering error.
    pub fn render(&self, messages: &[Message]) -> std::result::Result<String, String> {
        let template = self.env.get_template(NAME).expect("added at construction");
        let mut ctx = self.special.clone();
        ctx.insert("messages".into(), Value::from(minijinja::value::Serde(messages)));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        template.render(ctx).map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation if e.name().is_none() || e.detail().is_some() => {
                format!("chat template: {}", e.detail().unwrap_or("invalid operation"))
            }
            _ => format!("chat template: {e:#}"),
        })
    }
}

/// `tokenizer_config.json`'s `chat_template`: a string, or a list of `{name, template}` of which `default`.
fn template_in_config(config: &serde_json::Value) -> Option<std::result::Result<String, String>> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(Ok(s.clone())),
        serde_json::Value::Array(named) => Some(
            named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned))
                .ok_or_else(|| "chat_template is a list without a `default` template".to_owned()),
        ),
        serde_json::Value::Null => None,
        other => Some(Err(format!("chat_template must be a string or a list, not {other}"))),
    }
}

/// Special-token texts from `tokenizer_config.json` (plain strings or `{"content": …}` objects).
fn special_tokens(config: &serde_json::Value) -> BTreeMap<String, String> {
    SPECIAL_TOKENS
        .iter()
        .filter_map(|&name| {
            let v = config.get(name)?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            Some((name.to_owned(), text.to_owned()))
        })
        .collect()
}

/// transformers' `{% generation %}` … `{% endgeneration %}` only marks assistant spans; it renders its body.
/// minijinja has no such tag, so each becomes an always-true `if` with the same whitespace control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (left, body) = inner.strip_prefix(['-', '+']).map_or(("", inner), |b| (&inner[..1], b));
        let (body, right) = body
            .strip_suffix(['-', '+'])
            .map_or((body, ""), |b| (b, &body[body.len() - 1..]));
        match body.trim() {
            "generation" => write!(out, "{{%{left} if true {right}%}}").expect("writing to a String"),
            "endgeneration" => write!(out, "{{%{left} endif {right}%}}").expect("writing to a String"),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let now = jiff::Zoned::now();
    jiff::fmt::strtime::format(format.as_str(), &now)
        .map(Value::from)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {e}")))
}

/// `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)`, as
/// transformers defines `tojson` (no HTML escaping, Python's separators).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, format!("tojson: {e}")))?;
    let (item, key) = match &separators {
        Some(s) if s.len() == 2 => (s[0].as_str(), s[1].as_str()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be (item, key)",
            ))
        }
        None if indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    let style = PyJson {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

struct PyJson<'a> {
    indent: Option<usize>,
    item: &'a str,
    key: &'a str,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson<'_> {
    fn write(&self, v: &serde_json::Value, level: usize, out: &mut String) {
        match v {
            serde_json::Value::Array(items) if !items.is_empty() => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separate(i, level + 1, out);
                    self.write(item, level + 1, out);
                }
                self.close(level, out);
                out.push(']');
            }
            serde_json::Value::Object(map) if !map.is_empty() => {
                out.push('{');
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    self.separate(i, level + 1, out);
                    self.string(k, out);
                    out.push_str(self.key);
                    self.write(item, level + 1, out);
                }
                self.close(level, out);
                out.push('}');
            }
            serde_json::Value::String(s) => self.string(s, out),
            other => out.push_str(&other.to_string()),
        }
    }

    fn separate(&self, index: usize, level: usize, out: &mut String) {
        if index > 0 {
            out.push_str(self.item);
        }
        if let Some(n) = self.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    }

    fn close(&self, level: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        let quoted = serde_json::to_string(s).expect("strings serialize");
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("writing to a String");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let special = BTreeMap::from([("bos_token".to_owned(), "<s>".to_owned())]);
        ChatTemplate::new(source.to_owned(), special).unwrap()
    }

    #[test]
    fn renders_with_trim_and_lstrip_blocks_like_transformers() {
        let t = template(
            "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[U]{{ m.content | trim }}\n    {% else %}\n[A]{{ m.content }}\n    {% endif %}\n{% endfor %}",
        );
        let text = t
            .render(&[Message::new("user", "  hi  "), Message::new("assistant", "yo")])
            .unwrap();
        assert_eq!(text, "<s>\n[U]hi\n[A]yo\n");
    }

    #[test]
    fn raise_exception_is_the_error_message() {
        let t = template("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}");
        let e = t.render(&[Message::new("assistant", "x")]).unwrap_err();
        assert_eq!(e, "chat template: first must be user");
    }

    #[test]
    fn loop_controls_and_python_methods() {
        let t = template(
            "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.content.strip().upper() }}|{% endfor %}",
        );
        let msgs = [
            Message::new("system", "s"),
            Message::new("user", " a "),
            Message::new("user", "b"),
        ];
        assert_eq!(t.render(&msgs).unwrap(), "A|");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = template(
            "{{ {'b': 1, 'a': ['x<y', 'é']} | tojson }}|{{ {'b': 1, 'a': 2} | tojson(indent=2, sort_keys=true) }}",
        );
        assert_eq!(
            t.render(&[]).unwrap(),
            "{\"b\": 1, \"a\": [\"x<y\", \"é\"]}|{\n  \"a\": 2,\n  \"b\": 1\n}"
        );
    }

    #[test]
    fn generation_tags_render_their_body() {
        let t = template("{% for m in messages %}{%- generation -%} {{ m.content }} {%- endgeneration %}{% endfor %}");
        assert_eq!(t.render(&[Message::new("assistant", "ok")]).unwrap(), "ok");
    }

    #[test]
    fn extra_message_fields_reach_the_template() {
        let t = template("{% for m in messages %}{{ m.name }}:{{ m.content }}{% endfor %}");
        let mut m = Message::new("user", "hi");
        m.extra.insert("name".into(), "ann".into());
        assert_eq!(t.render(&[m]).unwrap(), "ann:hi");
    }
}
