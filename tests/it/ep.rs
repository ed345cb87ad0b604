//! Execution providers: a named accelerator that cannot run is an error naming it; `auto` says it fell back.
//! (These run on machines without a GPU and the CPU ONNX Runtime build, as CI does.)

use rewardrt::{ExecutionProvider, Scorer, ScorerOptions};

use crate::{bundled, chain};

/// The strict-error tests assume the CPU-only ONNX Runtime build the tests load by default.
fn cpu_only_library() -> bool {
    rewardrt::runtime::runtime(None).unwrap();
    rewardrt::ep::available_in_library() == ["CPU"]
}

fn strict_error(ep: ExecutionProvider) -> String {
    assert!(
        cpu_only_library(),
        "these tests expect the CPU onnxruntime build; unset ORT_DYLIB_PATH"
    );
    let err = Scorer::load(bundled(), ScorerOptions::default().with_ep(ep)).expect_err("must not silently use CPU");
    chain(&err)
}

#[test]
fn strict_cuda_names_cuda() {
    let msg = strict_error(ExecutionProvider::Cuda { device: 0 });
    assert!(msg.contains("execution provider CUDA is unavailable"), "{msg}");
}

#[test]
fn strict_tensorrt_names_tensorrt() {
    let msg = strict_error(ExecutionProvider::TensorRt { device: 0 });
    assert!(msg.contains("execution provider TensorRT is unavailable"), "{msg}");
}

#[test]
fn strict_directml_names_directml() {
    let msg = strict_error(ExecutionProvider::DirectMl { device: 0 });
    assert!(msg.contains("execution provider DirectML is unavailable"), "{msg}");
}

#[test]
fn auto_reports_cpu_fallback_and_scores() {
    let scorer = Scorer::load(bundled(), ScorerOptions::default().with_threads(1)).unwrap();
    let report = scorer.ep_report();
    assert_eq!(report.requested, ExecutionProvider::Auto);
    assert_eq!(report.effective, "CPU");
    assert!(report.fell_back_to_cpu());
    let tried: Vec<&str> = report.fallbacks.iter().map(|(ep, _)| *ep).collect();
    assert_eq!(tried, ["TensorRT", "CUDA", "DirectML"]);
    assert!(scorer.score_one(&rewardrt::Input::pair("What is 1+1?", "2")).is_ok());
}

#[test]
fn explicit_cpu_is_not_a_fallback() {
    let scorer = Scorer::load(bundled(), ScorerOptions::default().with_ep(ExecutionProvider::Cpu)).unwrap();
    assert_eq!(scorer.ep_report().effective, "CPU");
    assert!(!scorer.ep_report().fell_back_to_cpu());
}
