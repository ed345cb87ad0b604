//! Bad model directories are clear errors naming the file and the mismatch, never panics.

use std::{fs, path::Path};

use rewardrt::{Scorer, ScorerOptions};
use serde_json::Value;

use crate::{chain, copy_model, edit_manifest, replace_file};

fn load_error(dir: &Path) -> String {
    let err = Scorer::load(dir, ScorerOptions::default().with_ep(rewardrt::ExecutionProvider::Cpu))
        .expect_err("loading must fail");
    chain(&err)
}

#[test]
fn missing_file_is_named() {
    let tmp = copy_model();
    fs::remove_file(tmp.path().join("reward_head.safetensors")).unwrap();
    let msg = load_error(tmp.path());
    assert!(
        msg.contains("reward_head.safetensors") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn missing_manifest_is_named() {
    let tmp = copy_model();
    fs::remove_file(tmp.path().join("rewardrt.json")).unwrap();
    let msg = load_error(tmp.path());
    assert!(msg.contains("rewardrt.json"), "{msg}");
}

#[test]
fn unsupported_format_version() {
    let tmp = copy_model();
    edit_manifest(tmp.path(), |v| v["format_version"] = Value::from(99));
    let msg = load_error(tmp.path());
    assert!(msg.contains("unsupported format_version 99"), "{msg}");
}

#[test]
fn wrong_hidden_size_disagrees_with_head() {
    let tmp = copy_model();
    edit_manifest(tmp.path(), |v| v["backbone"]["hidden_size"] = Value::from(65));
    let msg = load_error(tmp.path());
    assert!(msg.contains("rewardrt.json") && msg.contains("hidden_size 65"), "{msg}");
}

/// Manifest and head agree with each other but not with the graph's output width.
#[test]
fn wrong_hidden_size_disagrees_with_graph() {
    let tmp = copy_model();
    let hidden = 65usize;
    edit_manifest(tmp.path(), |v| {
        v["backbone"]["hidden_size"] = Value::from(hidden);
        v["head"]["shape"] = serde_json::json!([1, hidden]);
    });
    let zeros = vec![0f32; hidden];
    let bytes: Vec<u8> = zeros.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, hidden], &bytes).unwrap();
    let head = safetensors::serialize([("weight", view)], None).unwrap();
    replace_file(tmp.path(), "reward_head.safetensors", &head);
    let msg = load_error(tmp.path());
    assert!(msg.contains("backbone.onnx") && msg.contains("hidden size 64"), "{msg}");
}

#[test]
fn head_shape_mismatch_names_the_tensor() {
    let tmp = copy_model();
    let bytes = vec![0u8; 4 * 2 * 64];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 64], &bytes).unwrap();
    let head = safetensors::serialize([("weight", view)], None).unwrap();
    replace_file(tmp.path(), "reward_head.safetensors", &head);
    let msg = load_error(tmp.path());
    assert!(
        msg.contains("reward_head.safetensors") && msg.contains("[2, 64]"),
        "{msg}"
    );
}

#[test]
fn corrupt_onnx_is_a_load_error_naming_the_graph() {
    let tmp = copy_model();
    replace_file(tmp.path(), "backbone.onnx", b"this is not a protobuf");
    let msg = load_error(tmp.path());
    assert!(
        msg.contains("backbone.onnx") && msg.contains("cannot load the graph"),
        "{msg}"
    );
}

#[test]
fn modified_file_fails_its_checksum() {
    let tmp = copy_model();
    fs::write(tmp.path().join("tokenizer.json"), b"{}").unwrap();
    let msg = load_error(tmp.path());
    assert!(
        msg.contains("tokenizer.json") && msg.contains("sha256 mismatch"),
        "{msg}"
    );
}

#[test]
fn graph_input_missing_from_manifest() {
    let tmp = copy_model();
    edit_manifest(tmp.path(), |v| v["backbone"]["inputs"]["position_ids"] = Value::Null);
    let msg = load_error(tmp.path());
    assert!(msg.contains("graph input `position_ids` is not declared"), "{msg}");
}

#[test]
fn declared_output_missing_from_graph() {
    let tmp = copy_model();
    edit_manifest(tmp.path(), |v| v["backbone"]["output"] = Value::from("hidden"));
    let msg = load_error(tmp.path());
    assert!(
        msg.contains("no output `hidden`") && msg.contains("last_hidden_state"),
        "{msg}"
    );
}

#[test]
fn invalid_manifest_json_is_named() {
    let tmp = copy_model();
    fs::write(tmp.path().join("rewardrt.json"), b"{\"format_version\": 1, \"name\": ").unwrap();
    let msg = load_error(tmp.path());
    assert!(
        msg.contains("invalid manifest") && msg.contains("rewardrt.json"),
        "{msg}"
    );
}
