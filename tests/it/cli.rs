//! The `rewardrt` binary: scoring files, bad input that loses nothing, info, verify, bench.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use rewardrt::{Input, ScorerOptions};
use serde_json::Value;

use crate::{bundled, load};

fn rewardrt(args: &[&str], stdin: &[u8]) -> Output {
    rewardrt_env(args, stdin, &[])
}

fn rewardrt_env(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rewardrt"))
        .args(args)
        .envs(env.iter().copied())
        .arg("--threads=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn model() -> String {
    bundled().display().to_string()
}

#[test]
fn score_writes_rewards_in_input_order_equal_to_the_library() {
    let input = b"{\"id\":\"b\",\"prompt\":\"What is 55+12?\",\"response\":\"67\"}\n\
                  {\"prompt\":\"What is 3+3?\",\"response\":\"6\"}\n\
                  {\"id\":9,\"text\":\"<|user|>What is 2+2?<|assistant|>4<|end|>\"}\n";
    let out = rewardrt(
        &["score", "--model", &model(), "--ep", "cpu", "--batch-size", "2"],
        input,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = lines(&out);
    let ids: Vec<&Value> = got.iter().map(|v| &v["id"]).collect();
    assert_eq!(ids, [&Value::from("b"), &Value::from(2), &Value::from(9)]);
    let scorer = load(&bundled(), ScorerOptions::default());
    let expected = [
        Input::pair("What is 55+12?", "67"),
        Input::pair("What is 3+3?", "6"),
        Input::text("<|user|>What is 2+2?<|assistant|>4<|end|>"),
    ];
    for (v, input) in got.iter().zip(&expected) {
        let want = scorer.score_one(input).unwrap()[0];
        let have = v["reward"].as_f64().unwrap() as f32;
        assert!((have - want).abs() <= 1e-5, "{v}: want {want}");
    }
}

/// One bad record of each kind: every one is reported with its line (and field), the good records are still
/// scored and written in order, and the exit status is 2.
#[test]
fn bad_records_are_reported_and_the_rest_scored() {
    let too_long = format!(
        "{{\"id\":\"long\",\"prompt\":\"What is {}?\",\"response\":\"1\"}}",
        "1+".repeat(80)
    );
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"id\":\"ok1\",\"prompt\":\"What is 1+2?\",\"response\":\"3\"}\n");
    input.extend_from_slice(b"{\"id\":\"broken\", \"prompt\": \n");
    input.extend_from_slice(b"{\"id\":\"noresp\",\"prompt\":\"What is 1+2?\"}\n");
    input.extend_from_slice(b"{\"id\":\"num\",\"prompt\":\"What is 1+2?\",\"response\":3}\n");
    input.extend_from_slice(b"{\"id\":\"utf\",\"text\":\"\xff\xfe\"}\n");
    input.extend_from_slice(too_long.as_bytes());
    input.extend_from_slice(b"\n{\"id\":\"ok2\",\"prompt\":\"What is 4+4?\",\"response\":\"8\"}\n");
    let out = rewardrt(&["score", "--model", &model(), "--ep", "cpu"], &input);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "line 2: invalid JSON",
        "line 3, field `response`: missing",
        "line 4, field `response`: must be a string, got a number",
        "line 5: invalid UTF-8",
        "line 6: ",
        "exceed max_length 64",
        "5 of 7 records failed",
    ] {
        assert!(stderr.contains(expected), "stderr lacks {expected:?}:\n{stderr}");
    }
    let got = lines(&out);
    assert_eq!(got.len(), 7, "one output line per input record");
    let ok: Vec<&str> = got
        .iter()
        .filter(|v| v.get("reward").is_some())
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ok, ["ok1", "ok2"]);
    assert_eq!(
        got[1]["id"],
        Value::from(2),
        "unparseable line gets its line number as id"
    );
    assert!(got[5]["error"].as_str().unwrap().contains("line 6"));
}

#[test]
fn multi_label_output_has_a_rewards_array() {
    let dir = crate::fixture("tiny-llama-k3").display().to_string();
    let out = rewardrt(&["score", "--model", &dir, "--ep", "cpu"], b"{\"text\":\"hello\"}\n");
    assert!(out.status.success());
    let got = lines(&out);
    assert_eq!(got[0]["rewards"].as_array().unwrap().len(), 3);
    assert!(got[0].get("reward").is_none());
}

#[test]
fn strict_cuda_fails_naming_cuda() {
    let out = rewardrt(&["score", "--model", &model(), "--ep", "cuda"], b"{\"text\":\"x\"}\n");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("execution provider CUDA is unavailable"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing scored on a fallback");
}

#[test]
fn auto_says_it_fell_back_to_cpu() {
    let out = rewardrt(
        &["score", "--model", &model()],
        b"{\"prompt\":\"What is 1+1?\",\"response\":\"2\"}\n",
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("execution provider: CPU (requested auto), fell back to CPU"),
        "{stderr}"
    );
    assert_eq!(lines(&out).len(), 1);
}

#[test]
fn info_json_reports_graph_library_and_eps() {
    let out = rewardrt(&["info", "--model", &model(), "--json"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let inputs: Vec<&str> = v["graph"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["input_ids", "attention_mask", "position_ids"]);
    assert_eq!(v["onnxruntime"]["version"], "1.31.1");
    assert_eq!(v["execution_providers"]["effective"], "CPU");
    assert_eq!(v["model"]["hidden_size"], 64);
}

#[test]
fn verify_passes_on_the_bundled_model() {
    let out = rewardrt(&["verify", "--model", &model(), "--ep", "cpu"], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PASS"), "{stdout}");
}

#[test]
fn verify_fails_on_tampered_reference() {
    let tmp = crate::copy_model();
    let path = tmp.path().join("reference.jsonl");
    let mut rows: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let r = rows[0]["rewards"][0].as_f64().unwrap();
    rows[0]["rewards"][0] = Value::from(r + 0.01);
    let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
    // Keep the manifest checksum consistent so the numeric check is what fails.
    crate::replace_file(tmp.path(), "reference.jsonl", body.as_bytes());
    let out = rewardrt(
        &["verify", "--model", &tmp.path().display().to_string(), "--ep", "cpu"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
}

#[test]
fn bench_prints_a_table() {
    let out = rewardrt(
        &[
            "bench",
            "--model",
            &model(),
            "--ep",
            "cpu",
            "--sequences",
            "4",
            "--repeats",
            "1",
            "--batch-sizes",
            "1,2",
            "--lengths",
            "8,16",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| batch"))
        .count();
    assert_eq!(rows, 4, "{stdout}");
}

#[test]
fn missing_model_dir_is_a_clear_error() {
    let out = rewardrt(&["score", "--model", "/nonexistent/model"], b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/model") && stderr.contains("not a directory"),
        "{stderr}"
    );
}

#[test]
fn missing_onnxruntime_library_says_how_to_get_one() {
    let out = rewardrt_env(
        &["score", "--model", &model()],
        b"",
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot load the ONNX Runtime library"), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so (ORT_DYLIB_PATH): no such file"),
        "{stderr}"
    );
    assert!(stderr.contains("pip install onnxruntime==1.31.1"), "{stderr}");
}

/// A file that is not a shared library: a load error naming it, not a panic.
#[test]
fn broken_onnxruntime_library_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not an ELF file").unwrap();
    let out = rewardrt(
        &[
            "info",
            "--model",
            &model(),
            "--ort-library",
            &fake.display().to_string(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot load the ONNX Runtime library") && stderr.contains("libonnxruntime.so"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn score_layer_and_normalize_options() {
    let probe = crate::fixture("tiny-llama-probe").display().to_string();
    let input = b"{\"id\":\"a\",\"text\":\"Hello there\"}\n";
    let plain = rewardrt(&["score", "--model", &probe, "--ep", "cpu"], input);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let plain = &lines(&plain)[0];
    assert!(plain.get("hidden").is_none(), "hidden only when asked: {plain}");

    let probed = rewardrt(&["score", "--model", &probe, "--ep", "cpu", "--layer", "1"], input);
    assert!(probed.status.success(), "{}", String::from_utf8_lossy(&probed.stderr));
    let probed = &lines(&probed)[0];
    assert_eq!(probed["hidden"].as_array().map(Vec::len), Some(32));
    assert_eq!(probed["rewards"], plain["rewards"], "probing leaves the rewards alone");

    let normalized = rewardrt(&["score", "--model", &probe, "--ep", "cpu", "--normalize"], input);
    let normalized = &lines(&normalized)[0];
    let raw0 = plain["rewards"][0].as_f64().unwrap();
    let norm0 = normalized["rewards"][0].as_f64().unwrap();
    assert!(
        (norm0 - (raw0 - 0.5) / 2.0).abs() < 1e-5,
        "{norm0} vs ({raw0} - 0.5) / 2"
    );

    let missing = rewardrt(&["score", "--model", &model(), "--ep", "cpu", "--layer", "0"], input);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--all-layers"));
}

#[test]
fn verify_uses_the_recorded_tolerance_of_a_quantised_graph() {
    let dir = crate::fixture("tiny-llama-int8").display().to_string();
    let out = rewardrt(&["verify", "--model", &dir, "--ep", "cpu"], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("precision      int8 graph"), "{stdout}");
    assert!(stdout.contains("PASS (tolerance 2e-1)"), "{stdout}");
    // A tolerance given on the command line wins: float32's 1e-4 rejects the int8 drift.
    let strict = rewardrt(&["verify", "--model", &dir, "--ep", "cpu", "--tolerance", "1e-4"], b"");
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn score_stats_file_reports_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("stats.json");
    let input = b"{\"prompt\":\"What is 3+3?\",\"response\":\"6\"}\n{\"prompt\":\"What is 3+4?\",\"response\":\"7\"}\n";
    let out = rewardrt(
        &[
            "score",
            "--model",
            &model(),
            "--ep",
            "cpu",
            "--stats",
            stats.to_str().unwrap(),
        ],
        input,
    );
    assert!(out.status.success());
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(stats).unwrap()).unwrap();
    assert_eq!(stats["records"], 2);
    assert_eq!(stats["execution_provider"], "CPU");
    assert_eq!(stats["threads"], 1);
    assert!(stats["records_per_second"].as_f64().unwrap() > 0.0);
}

/// `rewardrt eval` on the bundled model (CPU) with `pairs` and further arguments.
fn eval(pairs: &std::path::Path, extra: &[&str]) -> Output {
    let model = model();
    let args = [
        "eval",
        "--model",
        &model,
        "--ep",
        "cpu",
        "--pairs",
        pairs.to_str().unwrap(),
    ];
    rewardrt(&[&args[..], extra].concat(), b"")
}

#[test]
fn eval_prints_per_subset_accuracy_and_writes_report_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let (report, plot) = (tmp.path().join("report.json"), tmp.path().join("margins.svg"));
    let pairs = bundled().join("../../examples/arith-pairs.jsonl");
    let out = eval(
        &pairs,
        &["--report", report.to_str().unwrap(), "--plot", plot.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for subset in ["addition", "subtraction", "multiplication", "overall"] {
        assert!(stdout.contains(subset), "{stdout}");
    }
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("ETA"),
        "no progress bar when stderr is not a terminal"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(report["overall"]["pairs"], 120);
    let by_subset: u64 = report["subsets"]
        .as_object()
        .unwrap()
        .values()
        .map(|g| g["pairs"].as_u64().unwrap())
        .sum();
    assert_eq!(by_subset, 120);
    assert!(report["subsets"]["addition"]["margin"]["p50"].as_f64().is_some());
    assert_eq!(report["settings"]["chat_template"], true);
    let svg = std::fs::read_to_string(plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("multiplication"),
        "{}",
        &svg[..svg.len().min(200)]
    );
}

#[test]
fn eval_reports_bad_rows_and_evaluates_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"prompt\":\"What is 2+2?\",\"chosen\":\"4\",\"rejected\":\"5\",\"subset\":\"s\"}\n\
         {\"id\":\"bad\",\"prompt\":\"What is 2+2?\",\"chosen\":\"4\"}\n\
         {\"prompt\":\"What is 3+3?\",\"chosen\":\"6\",\"rejected\":\"60\",\"subset\":\"s\"}\n"
            .to_owned()
            // A pair whose rejected side is longer than the model's 64 positions: that pair fails, named.
            + &format!(
                "{{\"prompt\":\"What is 1+1?\",\"chosen\":\"2\",\"rejected\":\"{}\"}}\n",
                "1 ".repeat(80)
            ),
    )
    .unwrap();
    let out = eval(&pairs, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2, field `rejected`: missing"), "{stderr}");
    assert!(
        stderr.contains("line 4, rejected: ") && stderr.contains("max_length 64"),
        "{stderr}"
    );
    assert!(stderr.contains("2 rows failed"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("| s "),
        "the good rows were evaluated"
    );
    let svg = tmp.path().join("m.png");
    let out = eval(&pairs, &["--plot", svg.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("only .svg is supported"));
}

#[test]
fn truncation_flags_and_summary() {
    let long = format!(
        "{{\"id\":\"long\",\"prompt\":\"{}What is 5+6?\",\"response\":\"11\"}}\n{{\"id\":\"short\",\"prompt\":\"What is 1+1?\",\"response\":\"2\"}}\n",
        "What is 3+4? ".repeat(9)
    );
    let strict = rewardrt(&["score", "--model", &model(), "--ep", "cpu"], long.as_bytes());
    assert_eq!(strict.status.code(), Some(2));
    assert!(lines(&strict)[0]["error"]
        .as_str()
        .unwrap()
        .contains("exceed max_length 64"));
    assert!(lines(&strict)[1]["reward"].is_number());
    let left = rewardrt(
        &["score", "--model", &model(), "--ep", "cpu", "--truncation", "left"],
        long.as_bytes(),
    );
    assert!(left.status.success());
    assert!(lines(&left)[0]["reward"].is_number());
    let stderr = String::from_utf8_lossy(&left.stderr);
    assert!(stderr.contains("1 of 2 records were longer than 64 tokens"), "{stderr}");
    let lower = rewardrt(
        &["score", "--model", &model(), "--ep", "cpu", "--max-length", "8"],
        long.as_bytes(),
    );
    assert!(lines(&lower)[1]["error"]
        .as_str()
        .unwrap()
        .contains("exceed max_length 8"));
}

#[test]
fn pad_equals_eos_warns_once_with_both_rules() {
    let dir = crate::fixture("tiny-llama-padeos").display().to_string();
    let input = b"{\"id\":\"a\",\"text\":\"Hello there</s>\"}\n{\"id\":\"b\",\"text\":\"The quick brown fox</s>\"}\n";
    let out = rewardrt(&["score", "--model", &dir, "--ep", "cpu"], input);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("pad id equals its eos id").count(), 1, "{stderr}");
    assert!(
        stderr.contains("In force: `hf`") && stderr.contains("`mask` scores the trailing eos itself"),
        "{stderr}"
    );
    let hf = rewardrt(&["score", "--model", &dir, "--ep", "cpu", "--last-token", "hf"], input);
    let mask = rewardrt(
        &["score", "--model", &dir, "--ep", "cpu", "--last-token", "mask"],
        input,
    );
    assert_eq!(lines(&hf), lines(&out), "hf is the manifest's rule here");
    assert_ne!(
        lines(&mask)[0]["reward"],
        lines(&hf)[0]["reward"],
        "the rules score different tokens"
    );
    let mask_stderr = String::from_utf8_lossy(&mask.stderr);
    assert!(mask_stderr.contains("In force: `mask`"), "{mask_stderr}");
}

#[test]
fn doubled_bos_is_removed_and_reported() {
    // A text record that already starts with <s>; the bundled tokenizer adds another.
    let input = b"{\"text\":\"<s><|user|>What is 2+2?<|assistant|>4<|end|>\"}\n{\"prompt\":\"What is 2+2?\",\"response\":\"4\"}\n";
    let out = rewardrt(&["score", "--model", &model(), "--ep", "cpu"], input);
    assert!(out.status.success());
    let got = lines(&out);
    assert_eq!(got[0]["reward"], got[1]["reward"], "same tokens as the templated pair");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 records began with BOS"));
}
