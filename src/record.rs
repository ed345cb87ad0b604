//! Input records: what a user scores, and reading them from JSONL without losing good lines to bad ones.
//!
//! A record is `{"id"?, "prompt", "response"}`, `{"id"?, "messages": [{"role", "content"}, …]}` (a conversation
//! whose last message is the scored response) or `{"id"?, "text"}` (already formatted). Each JSONL line is
//! parsed on its own: a malformed line, a missing or mistyped field, or invalid UTF-8 becomes a
//! [`LineError`] naming the line and field, and the other lines are still returned.

use std::io::BufRead;

use serde_json::Value;

use crate::chat::Message;

/// What to score.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A prompt and a response, formatted by the model's template.
    Pair { prompt: String, response: String },
    /// A conversation rendered by the model's chat template; the last message is the response scored.
    Messages(Vec<Message>),
    /// Text already formatted as the model expects.
    Text(String),
}

impl Input {
    /// A `{prompt, response}` input.
    pub fn pair(prompt: impl Into<String>, response: impl Into<String>) -> Self {
        Input::Pair {
            prompt: prompt.into(),
            response: response.into(),
        }
    }

    /// An already formatted input.
    pub fn text(text: impl Into<String>) -> Self {
        Input::Text(text.into())
    }

    /// A conversation.
    pub fn messages(messages: impl Into<Vec<Message>>) -> Self {
        Input::Messages(messages.into())
    }
}

/// One parsed JSONL line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in the source.
    pub line: usize,
    /// The record's `id`, or its line number when it has none.
    pub id: Value,
    pub input: Input,
}

/// A line that could not be turned into a record.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub line: usize,
    /// The record's `id` when the line was JSON with an id, else its line number.
    pub id: Value,
    pub field: Option<&'static str>,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(field) = self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Streams JSONL records from `reader`, one item per non-blank line, so memory stays bounded on large inputs.
/// An `Err` item is an I/O failure of the reader itself; a bad line is an `Ok(Err(LineError))` item.
pub fn records<R: BufRead>(reader: R) -> Records<R> {
    rows(reader, parse_line)
}

/// Like [`records`] for rows of another shape: `parse` turns each non-blank line (1-based number, bytes without
/// the line ending) into a row or its [`LineError`].
pub fn rows<R: BufRead, T>(reader: R, parse: fn(usize, &[u8]) -> Result<T, LineError>) -> Records<R, T> {
    Records {
        reader,
        buf: Vec::new(),
        line: 0,
        parse,
    }
}

/// Iterator returned by [`records`] and [`rows`].
#[derive(Debug)]
pub struct Records<R, T = Record> {
    reader: R,
    buf: Vec<u8>,
    line: usize,
    parse: fn(usize, &[u8]) -> Result<T, LineError>,
}

impl<R: BufRead, T> Iterator for Records<R, T> {
    type Item = std::io::Result<Result<T, LineError>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            self.line += 1;
            let bytes = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                return Some(Ok((self.parse)(self.line, bytes)));
            }
        }
    }
}

/// Reads all JSONL records; see [`records`].
///
/// # Errors
/// Only when reading from `reader` fails; bad lines are returned as `Err` entries.
pub fn read_jsonl(reader: impl BufRead) -> std::io::Result<Vec<Result<Record, LineError>>> {
    records(reader).collect()
}

/// Parses one line (without its newline).
pub fn parse_line(line: usize, bytes: &[u8]) -> Result<Record, LineError> {
    let (obj, id) = parse_object(line, bytes)?;
    let input = parse_input(&obj).map_err(|(field, message)| LineError {
        line,
        id: id.clone(),
        field,
        message,
    })?;
    Ok(Record { line, id, input })
}

/// The JSON object on one line and its `id` (the line number when it has none); the error names the line.
pub fn parse_object(line: usize, bytes: &[u8]) -> Result<(serde_json::Map<String, Value>, Value), LineError> {
    let err = |field, message: String| LineError {
        line,
        id: Value::from(line),
        field,
        message,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|e| err(None, format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let value: Value = serde_json::from_str(text).map_err(|e| err(None, format!("invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(err(None, "expected a JSON object".into()));
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => Value::from(line),
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        Some(_) => return Err(err(Some("id"), "must be a string or a number".into())),
    };
    Ok((obj, id))
}

/// The input of one record object (`text`, `messages`, or `prompt` + `response`); the error names the field.
///
/// # Errors
/// A missing, mistyped or conflicting field: `(field, message)`.
pub fn parse_input(obj: &serde_json::Map<String, Value>) -> Result<Input, (Option<&'static str>, String)> {
    if let Some(messages) = obj.get("messages") {
        if ["text", "prompt", "response"].iter().any(|f| obj.contains_key(*f)) {
            return Err((
                Some("messages"),
                "give one of `messages`, `prompt` + `response`, or `text`".into(),
            ));
        }
        return parse_messages(messages)
            .map(Input::Messages)
            .map_err(|message| (Some("messages"), message));
    }
    let string = |field: &'static str| -> Result<Option<String>, (Option<&'static str>, String)> {
        match obj.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err((Some(field), format!("must be a string, got {}", kind(other)))),
        }
    };
    match (string("text")?, string("prompt")?, string("response")?) {
        (Some(text), None, None) => Ok(Input::Text(text)),
        (Some(_), _, _) => Err((
            Some("text"),
            "give either `text` or `prompt` + `response`, not both".into(),
        )),
        (None, Some(prompt), Some(response)) => Ok(Input::Pair { prompt, response }),
        (None, Some(_), None) => Err((Some("response"), "missing".into())),
        (None, None, Some(_)) => Err((Some("prompt"), "missing".into())),
        (None, None, None) => Err((
            None,
            "record needs `prompt` and `response`, `messages`, or `text`".into(),
        )),
    }
}

/// A non-empty array of `{"role": str, "content": str, …}`; the error names the message and field.
pub fn parse_messages(v: &Value) -> Result<Vec<Message>, String> {
    let Value::Array(items) = v else {
        return Err(format!("must be an array of messages, got {}", kind(v)));
    };
    if items.is_empty() {
        return Err("must have at least one message".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(fields) = m else {
                return Err(format!("[{i}] must be an object, got {}", kind(m)));
            };
            for field in ["role", "content"] {
                match fields.get(field) {
                    Some(Value::String(_)) => {}
                    None => return Err(format!("[{i}].{field} is missing")),
                    Some(other) => return Err(format!("[{i}].{field} must be a string, got {}", kind(other))),
                }
            }
            serde_json::from_value(m.clone()).map_err(|e| format!("[{i}]: {e}"))
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(s: &[u8]) -> Vec<Result<Record, LineError>> {
        read_jsonl(s).unwrap()
    }

    #[test]
    fn good_lines_survive_bad_ones() {
        let got = parse_all(b"{\"prompt\":\"a\",\"response\":\"b\"}\nnot json\n\n{\"id\":\"x\",\"text\":\"t\"}\n");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().input, Input::pair("a", "b"));
        assert_eq!(got[0].as_ref().unwrap().id, Value::from(1));
        let bad = got[1].as_ref().unwrap_err();
        assert_eq!(bad.line, 2);
        assert!(bad.message.starts_with("invalid JSON"), "{bad}");
        let text = got[2].as_ref().unwrap();
        assert_eq!((text.line, text.id.clone()), (4, Value::from("x")));
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let e = parse_line(3, br#"{"prompt":"a"}"#).unwrap_err();
        assert_eq!((e.line, e.field), (3, Some("response")));
        let e = parse_line(4, br#"{"id":7,"prompt":"a","response":5}"#).unwrap_err();
        assert_eq!((e.field, e.id.clone()), (Some("response"), Value::from(7)));
        assert!(e.message.contains("a number"), "{e}");
        let e = parse_line(5, br#"{"id":[1],"text":"a"}"#).unwrap_err();
        assert_eq!(e.field, Some("id"));
    }

    #[test]
    fn invalid_utf8_is_a_line_error() {
        let got = parse_all(b"{\"text\":\"\xff\xfe\"}\n{\"text\":\"ok\"}\n");
        assert!(got[0].as_ref().unwrap_err().message.contains("UTF-8"));
        assert_eq!(got[1].as_ref().unwrap().input, Input::text("ok"));
    }

    #[test]
    fn messages_records_and_their_errors() {
        let r = parse_line(
            1,
            br#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","name":"x"}]}"#,
        )
        .unwrap();
        let Input::Messages(m) = r.input else {
            panic!("not messages")
        };
        assert_eq!((m[1].role.as_str(), m[1].content.as_str()), ("assistant", "b"));
        assert_eq!(m[1].extra["name"], "x");
        let e = parse_line(2, br#"{"messages":[{"role":"user"}]}"#).unwrap_err();
        assert_eq!(e.field, Some("messages"));
        assert_eq!(e.message, "[0].content is missing");
        let e = parse_line(3, br#"{"messages":[],"id":"q"}"#).unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.id.clone()),
            ("must have at least one message", Value::from("q"))
        );
        let e = parse_line(4, br#"{"messages":[{"role":"user","content":"a"}],"text":"t"}"#).unwrap_err();
        assert!(e.message.contains("give one of"), "{e}");
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let got = parse_all(b"{\"text\":\"a\"}\r\n{\"text\":\"b\"}\r\n");
        assert!(got.iter().all(Result::is_ok));
    }
}
