//! A reward must not change with batch size, batch composition, order or padding side. Every check goes
//! through [`assert_invariant`].

use rewardrt::{Input, PaddingSide, ScorerOptions};

use crate::{bundled, fixture, load};

/// Stated tolerance: different batch shapes change float summation order, nothing more.
const TOLERANCE: f32 = 1e-5;

/// Scores `inputs` one at a time (right padding, batch size 1) as the baseline, then under each batch size,
/// each padding side and a reversed order, and asserts every reward equals the baseline.
fn assert_invariant(dir: &std::path::Path, inputs: &[Input]) {
    let single = load(dir, ScorerOptions::default().with_batch_size(1));
    let baseline: Vec<Vec<f32>> = inputs.iter().map(|i| single.score_one(i).unwrap()).collect();
    for side in [PaddingSide::Right, PaddingSide::Left] {
        for batch_size in [2, 3, inputs.len()] {
            let scorer = load(
                dir,
                ScorerOptions::default()
                    .with_batch_size(batch_size)
                    .with_padding_side(side),
            );
            let got: Vec<Vec<f32>> = scorer.score(inputs).unwrap().into_iter().map(Result::unwrap).collect();
            compare(&baseline, &got, &format!("{side:?} padding, batch size {batch_size}"));

            let reversed: Vec<Input> = inputs.iter().rev().cloned().collect();
            let mut got: Vec<Vec<f32>> = scorer
                .score(&reversed)
                .unwrap()
                .into_iter()
                .map(Result::unwrap)
                .collect();
            got.reverse();
            compare(
                &baseline,
                &got,
                &format!("{side:?} padding, batch size {batch_size}, reversed"),
            );
        }
    }
}

fn compare(expected: &[Vec<f32>], got: &[Vec<f32>], what: &str) {
    assert_eq!(expected.len(), got.len());
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        for (a, b) in e.iter().zip(g) {
            assert!((a - b).abs() <= TOLERANCE, "{what}: record {i} scored {b}, alone {a}");
        }
    }
}

fn mixed_lengths() -> Vec<Input> {
    vec![
        Input::pair("What is 3+4?", "7"),
        Input::pair("What is 93-57?", "36"),
        Input::pair("What is 10+10?", "1234567"),
        Input::text("<|user|>What is 1+1?<|assistant|>2<|end|>"),
        Input::pair("What is 99+99? Please answer carefully and show no work at all", "198"),
        Input::pair("What is 5-9?", "-4"),
        Input::pair("What is 0+0?", "0"),
    ]
}

#[test]
fn bundled_model_is_batch_order_and_padding_invariant() {
    assert_invariant(&bundled(), &mixed_lengths());
}

#[test]
fn multi_label_model_is_batch_order_and_padding_invariant() {
    let inputs = vec![
        Input::pair("Hello", "Hi there."),
        Input::text("a"),
        Input::pair(
            "Write a sentence about rewards and models and tokens",
            "Reward models score pairs.",
        ),
        Input::pair("Say something", "quick brown fox"),
    ];
    assert_invariant(&fixture("tiny-llama-k3"), &inputs);
}

/// Which records share a batch must not matter: the same record next to short or long neighbours.
#[test]
fn batch_composition_does_not_change_a_reward() {
    let scorer = load(&bundled(), ScorerOptions::default().with_batch_size(8));
    let probe = Input::pair("What is 42+17?", "59");
    let alone = scorer.score_one(&probe).unwrap()[0];
    let short = Input::pair("What is 1+1?", "2");
    let long = Input::pair("What is 12+34? Answer with the number only, nothing else please", "46");
    for neighbour in [short, long] {
        let batch = [neighbour.clone(), probe.clone(), neighbour.clone()];
        let got = scorer.score(&batch).unwrap()[1].as_ref().unwrap()[0];
        assert!(
            (got - alone).abs() <= TOLERANCE,
            "next to {neighbour:?}: {got} vs alone {alone}"
        );
    }
}

/// The bundled model was trained to prefer correct arithmetic. `examples/arith.jsonl` holds held-out problems
/// (never seen in training), each with a `-correct` and a `-wrong` response. The model's held-out pairwise
/// accuracy is 94.1% (models/arith-rm/training.json), so at least 9 of these 10 pairs must rank correctly
/// (it misranks one multiplication, `p06`, whose operator it gets right 87.6% of the time).
#[test]
fn bundled_model_ranks_correct_examples_first() {
    let scorer = load(&bundled(), ScorerOptions::default());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/arith.jsonl");
    let records: Vec<rewardrt::Record> =
        rewardrt::record::read_jsonl(std::fs::File::open(path).map(std::io::BufReader::new).unwrap())
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let inputs: Vec<Input> = records.iter().map(|r| r.input.clone()).collect();
    let rewards: Vec<f32> = scorer
        .score(&inputs)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap()[0])
        .collect();
    let reward_of = |id: &str| rewards[records.iter().position(|r| r.id == id).unwrap()];
    let pairs: Vec<String> = records
        .iter()
        .filter_map(|r| r.id.as_str()?.strip_suffix("-correct").map(str::to_owned))
        .collect();
    assert_eq!(pairs.len(), 10);
    let misranked: Vec<&String> = pairs
        .iter()
        .filter(|p| reward_of(&format!("{p}-correct")) <= reward_of(&format!("{p}-wrong")))
        .collect();
    assert!(misranked.len() <= 1, "correct answer not preferred for {misranked:?}");
}

/// One `Scorer` shared by threads (a pool of two sessions): every thread gets exactly its own rewards, equal to
/// scoring alone.
#[test]
fn shared_scorer_across_threads_gives_each_caller_its_own_rewards() {
    let scorer = load(&bundled(), ScorerOptions::default().with_workers(2).with_batch_size(4));
    let inputs = mixed_lengths();
    let alone: Vec<f32> = inputs.iter().map(|i| scorer.score_one(i).unwrap()[0]).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (scorer, inputs, alone) = (&scorer, &inputs, &alone);
            s.spawn(move || {
                for round in 0..5 {
                    // Each thread scores a different rotation, so concurrent batches differ.
                    let k = (t + round) % inputs.len();
                    let rotated: Vec<Input> = inputs[k..].iter().chain(&inputs[..k]).cloned().collect();
                    let got = scorer.score(&rotated).unwrap();
                    for (j, r) in got.into_iter().enumerate() {
                        let want = alone[(j + k) % inputs.len()];
                        let have = r.unwrap()[0];
                        assert!(
                            (have - want).abs() <= TOLERANCE,
                            "thread {t} round {round} record {j}: {have} vs {want}"
                        );
                    }
                }
            });
        }
    });
    assert_eq!(scorer.backbone().pool_size(), 2);
}

#[test]
fn learned_positions_model_is_batch_order_and_padding_invariant() {
    let inputs = vec![
        Input::pair("Hello", "Hi there."),
        Input::text("a"),
        Input::pair("What is the capital of France?", " Paris is the capital of France."),
        Input::pair("Say something", "quick brown fox"),
    ];
    assert_invariant(&fixture("tiny-gpt2"), &inputs);
}
