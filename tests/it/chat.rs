//! Chat templates against transformers: token ids equal `apply_chat_template(..., tokenize=True)` for every
//! conversation in `tests/data/chat-templates/*/goldens.jsonl` (written by `export/make_template_goldens.py`),
//! template errors are the template's own messages, and a doubled BOS is caught.

use std::path::Path;

use rewardrt::{
    batch::Encoder,
    chat::{ChatTemplate, Message},
    format::Formatter,
    Error, Input, ScorerOptions,
};
use serde::Deserialize;

use crate::{bundled, chain, fixture, load};

#[derive(Deserialize)]
struct Golden {
    id: String,
    messages: Vec<Message>,
    text: Option<String>,
    input_ids: Option<Vec<i64>>,
    input_ids_text_with_special_tokens: Option<Vec<i64>>,
    error: Option<String>,
}

fn goldens(dir: &Path) -> Vec<Golden> {
    let text = std::fs::read_to_string(dir.join("goldens.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The id of the tokenizer config's `bos_token` in `tokenizer.json`, if any.
fn bos_id(dir: &Path) -> Option<u32> {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    let bos = config.get("bos_token")?.as_str()?;
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    tok["added_tokens"]
        .as_array()?
        .iter()
        .find(|t| t["content"] == bos)
        .map(|t| t["id"].as_u64().unwrap() as u32)
}

#[test]
fn every_template_family_matches_transformers_token_for_token() {
    let mut checked = 0;
    for family in ["chatml", "llama3", "gemma", "mistral"] {
        let dir = fixture("chat-templates").join(family);
        let chat = ChatTemplate::load(Some(&dir.join("tokenizer_config.json")), None)
            .unwrap()
            .expect("the config has a template");
        let formatter = Formatter::new("{prompt}{response}", true).with_chat_template(chat, true);
        let encoder = Encoder::load(&dir.join("tokenizer.json"), 4096)
            .unwrap()
            .with_bos_id(bos_id(&dir));
        for golden in goldens(&dir) {
            let input = Input::messages(golden.messages.clone());
            let formatted = formatter.format(&input);
            match (&golden.error, formatted) {
                (Some(expected), Err(got)) => {
                    assert_eq!(got, format!("chat template: {expected}"), "{family}/{}", golden.id)
                }
                (Some(expected), Ok(f)) => panic!(
                    "{family}/{}: rendered {:?}, transformers raised {expected}",
                    golden.id, f.text
                ),
                (None, Err(e)) => panic!("{family}/{}: {e}", golden.id),
                (None, Ok(f)) => {
                    assert_eq!(
                        Some(f.text.as_ref()),
                        golden.text.as_deref(),
                        "{family}/{}: text",
                        golden.id
                    );
                    let got = encoder.encode(&[f]).pop().unwrap().unwrap();
                    assert_eq!(Some(&got.ids), golden.input_ids.as_ref(), "{family}/{}: ids", golden.id);
                    assert!(!got.double_bos);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 14, "only {checked} conversations rendered");
}

#[test]
fn a_doubled_bos_is_caught_and_removed() {
    // Rendered chat text already starts with BOS; tokenizing it with special tokens adds another (what
    // transformers gives for `tokenizer(text)`); the encoder removes the extra one and says so.
    let mut doubled = 0;
    for family in ["chatml", "llama3", "gemma", "mistral"] {
        let dir = fixture("chat-templates").join(family);
        let formatter = Formatter::new("{prompt}{response}", true);
        let encoder = Encoder::load(&dir.join("tokenizer.json"), 4096)
            .unwrap()
            .with_bos_id(bos_id(&dir));
        for golden in goldens(&dir).into_iter().filter(|g| g.text.is_some()) {
            let input = Input::text(golden.text.clone().unwrap());
            let got = encoder
                .encode(&[formatter.format(&input).unwrap()])
                .pop()
                .unwrap()
                .unwrap();
            let naive = golden.input_ids_text_with_special_tokens.unwrap();
            let expected = golden.input_ids.unwrap();
            assert_eq!(got.ids, expected, "{family}/{}", golden.id);
            assert_eq!(got.double_bos, naive != expected, "{family}/{}", golden.id);
            doubled += usize::from(got.double_bos);
        }
    }
    assert!(
        doubled >= 9,
        "the BOS families (llama3, gemma, mistral) double BOS: {doubled}"
    );
}

#[test]
fn bundled_model_template_matches_transformers() {
    let scorer = load(&bundled(), ScorerOptions::default());
    assert!(scorer.uses_chat_template());
    let goldens = goldens(&fixture("chat-templates").join("arith-rm"));
    let inputs: Vec<Input> = goldens.iter().map(|g| Input::messages(g.messages.clone())).collect();
    for (golden, got) in goldens.iter().zip(scorer.encode(&inputs)) {
        match (&golden.error, got) {
            (None, Ok(ids)) => assert_eq!(Some(&ids), golden.input_ids.as_ref(), "{}", golden.id),
            // Longer than the bundled model's 64 positions: an error for that record, never a cut.
            (None, Err(Error::Record { message, .. })) if golden.input_ids.as_ref().unwrap().len() > 64 => {
                assert!(message.contains("exceed max_length 64"), "{message}");
            }
            (Some(expected), Err(Error::Record { field, message, .. })) => {
                assert_eq!(field, Some("messages"));
                assert_eq!(message, format!("chat template: {expected}"));
            }
            (expected, got) => panic!("{}: expected {expected:?}, got {got:?}", golden.id),
        }
    }
    // A prompt/response pair renders through the template to the same ids as the equivalent messages.
    let pair = scorer.encode(&[Input::pair("What is the capital of France?", "Paris.")]);
    assert_eq!(pair[0].as_ref().ok(), goldens[0].input_ids.as_ref());
}

#[test]
fn messages_record_on_a_model_without_template_fails_alone() {
    let scorer = load(&fixture("tiny-gpt2"), ScorerOptions::default());
    let got = scorer
        .score(&[
            Input::messages(vec![Message::new("user", "hi"), Message::new("assistant", "yo")]),
            Input::text("Hello there"),
        ])
        .unwrap();
    let e = got[0].as_ref().unwrap_err();
    assert!(chain(e).contains("need a chat template"), "{}", chain(e));
    assert!(got[1].is_ok(), "the other record is scored");
}
