//! Preference evaluation on chosen/rejected pairs (RewardBench format): accuracy and margins, overall and per
//! subset.
//!
//! A row is `{"id"?, "prompt", "chosen", "rejected", "subset"?}` with response strings, or has `chosen` and
//! `rejected` as full conversations (`[{"role", "content"}, …]`), or `messages` (the prompt turns) with string
//! responses. A pair is right when `r(chosen) > r(rejected)`; a tie counts as wrong. Bad rows are reported with
//! their line and field and left out; the others are evaluated.

use std::{collections::BTreeMap, io::BufRead};

use serde::Serialize;
use serde_json::Value;

use crate::{
    chat::Message,
    record::{self, parse_messages, LineError},
    Input,
};

/// Subset name for rows without one.
pub const DEFAULT_SUBSET: &str = "all";

/// One chosen/rejected pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub line: usize,
    pub id: Value,
    pub subset: String,
    pub chosen: Input,
    pub rejected: Input,
}

/// Reads pairs; one entry per non-blank line, the pair or its error.
///
/// # Errors
/// Only when reading fails.
pub fn read_pairs(reader: impl BufRead) -> std::io::Result<Vec<Result<Pair, LineError>>> {
    record::rows(reader, parse_pair).collect()
}

/// Parses one pair row.
pub fn parse_pair(line: usize, bytes: &[u8]) -> Result<Pair, LineError> {
    let (obj, id) = record::parse_object(line, bytes)?;
    let err = |id: &Value, field, message: String| LineError {
        line,
        id: id.clone(),
        field,
        message,
    };
    let subset = match obj.get("subset") {
        None | Some(Value::Null) => DEFAULT_SUBSET.to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(err(&id, Some("subset"), "must be a string".into())),
    };
    let prompt = match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(p)), None) => Some(Prompt::Text(p.clone())),
        (None, Some(m)) => Some(Prompt::Messages(
            parse_messages(m).map_err(|e| err(&id, Some("messages"), e))?,
        )),
        (None, None) => None,
        (Some(Value::String(_)), Some(_)) => {
            return Err(err(
                &id,
                Some("messages"),
                "give `prompt` or `messages`, not both".into(),
            ))
        }
        (Some(_), _) => return Err(err(&id, Some("prompt"), "must be a string".into())),
    };
    let side = |field: &'static str| -> Result<Input, LineError> {
        match (obj.get(field), &prompt) {
            (None, _) => Err(err(&id, Some(field), "missing".into())),
            (Some(Value::String(response)), Some(Prompt::Text(p))) => Ok(Input::pair(p.clone(), response.clone())),
            (Some(Value::String(response)), Some(Prompt::Messages(m))) => {
                let mut conv = m.clone();
                conv.push(Message::new("assistant", response.clone()));
                Ok(Input::messages(conv))
            }
            (Some(Value::String(_)), None) => Err(err(
                &id,
                Some("prompt"),
                "missing (string responses need `prompt` or `messages`)".into(),
            )),
            (Some(conv @ Value::Array(_)), None) => parse_messages(conv)
                .map(Input::messages)
                .map_err(|e| err(&id, Some(field), e)),
            (Some(Value::Array(_)), Some(_)) => Err(err(
                &id,
                Some(field),
                "a full conversation cannot be combined with `prompt` or `messages`".into(),
            )),
            (Some(_), _) => Err(err(&id, Some(field), "must be a string or a list of messages".into())),
        }
    };
    Ok(Pair {
        line,
        chosen: side("chosen")?,
        rejected: side("rejected")?,
        id,
        subset,
    })
}

enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

/// Accuracy and margin distribution of a group of pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupReport {
    pub pairs: usize,
    pub correct: usize,
    /// `correct / pairs` (a tie is wrong).
    pub accuracy: f64,
    pub ties: usize,
    pub margin: MarginStats,
}

/// Distribution of `r(chosen) − r(rejected)`; quantiles interpolate linearly (numpy's default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarginStats {
    pub mean: f64,
    pub min: f64,
    pub p05: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p95: f64,
    pub max: f64,
}

/// The evaluation of a pairs file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub overall: GroupReport,
    /// By subset name, sorted.
    pub subsets: BTreeMap<String, GroupReport>,
    /// Margins by subset, in input order (for plots).
    #[serde(skip)]
    pub margins: BTreeMap<String, Vec<f64>>,
}

/// Builds the report from `(subset, margin)` of each evaluated pair.
///
/// # Panics
/// If `margins` is empty.
pub fn report(margins: &[(String, f64)]) -> EvalReport {
    assert!(!margins.is_empty(), "no pairs to evaluate");
    let mut by_subset: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (subset, m) in margins {
        by_subset.entry(subset.clone()).or_default().push(*m);
    }
    let all: Vec<f64> = margins.iter().map(|(_, m)| *m).collect();
    EvalReport {
        overall: group(&all),
        subsets: by_subset.iter().map(|(k, v)| (k.clone(), group(v))).collect(),
        margins: by_subset,
    }
}

fn group(margins: &[f64]) -> GroupReport {
    let correct = margins.iter().filter(|&&m| m > 0.0).count();
    let mut sorted = margins.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| quantile(&sorted, p);
    GroupReport {
        pairs: margins.len(),
        correct,
        accuracy: correct as f64 / margins.len() as f64,
        ties: margins.iter().filter(|&&m| m == 0.0).count(),
        margin: MarginStats {
            mean: margins.iter().sum::<f64>() / margins.len() as f64,
            min: sorted[0],
            p05: q(0.05),
            p25: q(0.25),
            p50: q(0.5),
            p75: q(0.75),
            p95: q(0.95),
            max: sorted[sorted.len() - 1],
        },
    }
}

/// Linear-interpolation quantile of sorted values (numpy's default method).
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts_ties_as_wrong_and_groups_subsets() {
        let r = report(&[
            ("a".into(), 1.0),
            ("a".into(), 0.0),
            ("b".into(), -2.0),
            ("b".into(), 3.0),
        ]);
        assert_eq!((r.overall.pairs, r.overall.correct, r.overall.ties), (4, 2, 1));
        assert_eq!(r.overall.accuracy, 0.5);
        assert_eq!(r.subsets["a"].accuracy, 0.5);
        assert_eq!(r.subsets["b"].margin.mean, 0.5);
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&sorted, 0.5), 2.5);
        assert!((quantile(&sorted, 0.05) - 1.15).abs() < 1e-12);
        assert_eq!(quantile(&[7.0], 0.95), 7.0);
    }

    #[test]
    fn pair_rows_in_every_shape() {
        let p = parse_pair(1, br#"{"prompt":"q","chosen":"a","rejected":"b","subset":"s"}"#).unwrap();
        assert_eq!((p.chosen, p.subset.as_str()), (Input::pair("q", "a"), "s"));
        let p = parse_pair(
            2,
            br#"{"messages":[{"role":"user","content":"q"}],"chosen":"a","rejected":"b"}"#,
        )
        .unwrap();
        let Input::Messages(m) = p.rejected else { panic!() };
        assert_eq!(
            (m.len(), m[1].content.as_str(), p.subset.as_str()),
            (2, "b", DEFAULT_SUBSET)
        );
        let p = parse_pair(
            3,
            br#"{"chosen":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"rejected":[{"role":"user","content":"q"},{"role":"assistant","content":"b"}]}"#,
        )
        .unwrap();
        assert!(matches!(p.chosen, Input::Messages(_)));
    }

    #[test]
    fn bad_rows_name_the_field() {
        let e = parse_pair(4, br#"{"id":"x","prompt":"q","chosen":"a"}"#).unwrap_err();
        assert_eq!((e.line, e.field, e.id.clone()), (4, Some("rejected"), Value::from("x")));
        let e = parse_pair(5, br#"{"chosen":"a","rejected":"b"}"#).unwrap_err();
        assert_eq!(e.field, Some("prompt"));
        let e = parse_pair(6, br#"{"prompt":"q","chosen":7,"rejected":"b"}"#).unwrap_err();
        assert_eq!(e.field, Some("chosen"));
    }
}
