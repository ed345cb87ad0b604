//! `--truncation left` keeps the response and the scored last token, and scores like PyTorch on the same
//! left-truncated text (`tests/data/truncation/arith-rm.jsonl`, from `export/make_fixtures.py`).

use rewardrt::{batch::Truncation, chat::Message, Input, ScorerOptions};
use serde::Deserialize;

use crate::{bundled, chain, fixture, load};

#[derive(Deserialize)]
struct Case {
    id: String,
    prompt: Option<String>,
    response: Option<String>,
    messages: Option<Vec<Message>>,
    max_length: usize,
    input_ids: Option<Vec<i64>>,
    dropped: Option<usize>,
    rewards: Option<Vec<f32>>,
    error: Option<String>,
}

impl Case {
    fn input(&self) -> Input {
        match &self.messages {
            Some(m) => Input::messages(m.clone()),
            None => Input::pair(self.prompt.clone().unwrap(), self.response.clone().unwrap()),
        }
    }
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("truncation").join("arith-rm.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn left_truncation_scores_like_pytorch_on_the_truncated_text() {
    let cases = cases();
    assert!(
        cases.iter().any(|c| c.dropped > Some(0)),
        "some case must really be truncated"
    );
    let scorer = load(&bundled(), ScorerOptions::default().with_truncation(Truncation::Left));
    let inputs: Vec<Input> = cases.iter().map(Case::input).collect();
    let encoded = scorer.encode_detailed(&inputs);
    let (scored, stats) = scorer.score_detailed(&inputs).unwrap();
    assert_eq!(stats.truncated, 2);
    for ((case, enc), got) in cases.iter().zip(encoded).zip(scored) {
        assert_eq!(case.max_length, scorer.max_length());
        match &case.error {
            Some(_) => {
                let e = got.unwrap_err();
                assert!(
                    chain(&e).contains("response and template alone are too long"),
                    "{}: {}",
                    case.id,
                    chain(&e)
                );
            }
            None => {
                let enc = enc.unwrap();
                assert_eq!(Some(&enc.ids), case.input_ids.as_ref(), "{}: ids", case.id);
                assert_eq!(Some(enc.dropped), case.dropped, "{}", case.id);
                assert!(enc.ids.len() <= 64);
                assert_eq!(
                    enc.ids.last(),
                    Some(&6),
                    "{}: the end-of-turn token is still last",
                    case.id
                );
                let (got, expected) = (got.unwrap(), case.rewards.clone().unwrap());
                assert!(
                    (got[0] - expected[0]).abs() <= 1e-4,
                    "{}: {} vs PyTorch {}",
                    case.id,
                    got[0],
                    expected[0]
                );
            }
        }
    }
}

#[test]
fn error_policy_reports_the_long_records_and_scores_the_rest() {
    let scorer = load(&bundled(), ScorerOptions::default());
    let cases = cases();
    let inputs: Vec<Input> = cases.iter().map(Case::input).collect();
    let got = scorer.score(&inputs).unwrap();
    for (case, got) in cases.iter().zip(&got) {
        if case.dropped == Some(0) {
            let expected = case.rewards.as_ref().unwrap()[0];
            assert!((got.as_ref().unwrap()[0] - expected).abs() <= 1e-4, "{}", case.id);
        } else {
            let e = got.as_ref().unwrap_err();
            assert!(chain(e).contains("exceed max_length 64"), "{}: {}", case.id, chain(e));
            assert!(chain(e).contains("--truncation left"), "the error says how to opt in");
        }
    }
}

#[test]
fn a_lower_max_length_truncates_earlier_and_keeps_the_end() {
    let scorer = load(
        &bundled(),
        ScorerOptions::default()
            .with_truncation(Truncation::Left)
            .with_max_length(12),
    );
    let input = Input::pair("What is 3+4? What is 3+4?", "7");
    let enc = scorer
        .encode_detailed(std::slice::from_ref(&input))
        .pop()
        .unwrap()
        .unwrap();
    let full = load(&bundled(), ScorerOptions::default())
        .encode(&[input])
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(enc.ids.len(), 12);
    assert_eq!(enc.dropped, full.len() - 12);
    assert_eq!(enc.ids[..2], full[..2], "BOS and the user marker stay");
    assert_eq!(
        enc.ids[enc.ids.len() - 4..],
        full[full.len() - 4..],
        "the response end stays"
    );
}

#[test]
fn text_records_keep_their_special_tokens_when_truncated() {
    // A pre-formatted text has no prompt/response structure: left truncation drops ordinary tokens from its
    // start, but never special tokens such as BOS or the role markers written in the text.
    let scorer = load(
        &bundled(),
        ScorerOptions::default()
            .with_truncation(Truncation::Left)
            .with_max_length(16),
    );
    let text = format!(
        "<|user|>{}What is 5+6?<|assistant|>11<|end|>",
        "What is 3+4? ".repeat(4)
    );
    let full = load(&bundled(), ScorerOptions::default())
        .encode(&[Input::text(text.clone())])
        .pop()
        .unwrap()
        .unwrap();
    let enc = scorer.encode_detailed(&[Input::text(text)]).pop().unwrap().unwrap();
    assert_eq!(enc.ids.len(), 16);
    assert_eq!(enc.ids[..2], [1, 4], "BOS and <|user|> stay");
    assert_eq!(
        enc.ids[enc.ids.len() - 3..],
        full[full.len() - 3..],
        "<|assistant|> 11 <|end|> stay"
    );
}
