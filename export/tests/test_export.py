"""Exporter tests on tiny random-weight models built from a config (no hub).

Run: ``python3 -m pytest export/tests -q``. Set ``REWARDRT_BIN`` to a built ``rewardrt`` binary to also run
``rewardrt verify`` on each exported directory (``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import export  # noqa: E402
import tinymodels  # noqa: E402


def quiet(*_args, **_kwargs):
    pass


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return tinymodels.make_llama_rm(tmp_path_factory.mktemp("hf") / "tiny-llama", seed=3)


@pytest.fixture(scope="module")
def exported(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny-llama"
    manifest = export.export_model(tiny_llama, out, log=quiet)
    return out, manifest


def test_writes_the_model_directory_contract(exported):
    out, manifest = exported
    for name in ["backbone.onnx", "reward_head.safetensors", "tokenizer.json", "reference.jsonl", "rewardrt.json"]:
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "rewardrt.json").read_text())
    assert on_disk == manifest
    assert manifest["format_version"] == 1
    assert manifest["name"] == "tiny-llama"
    assert manifest["backbone"]["hidden_size"] == 32
    assert manifest["head"]["shape"] == [1, 32]
    assert manifest["backbone"]["inputs"]["position_ids"] == "position_ids"
    for name, digest in manifest["files"].items():
        assert export.sha256_file(out / name) == digest, name


def test_graph_has_dynamic_batch_and_sequence(exported):
    import onnx

    out, _ = exported
    graph = onnx.load(str(out / "backbone.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "position_ids"]
    (output,) = graph.output
    dims = output.type.tensor_type.shape.dim
    assert output.name == "last_hidden_state"
    assert dims[0].dim_param and dims[1].dim_param, "batch and sequence axes must be dynamic"
    assert dims[2].dim_value == 32


@pytest.mark.parametrize("side", ["right", "left"])
def test_parity_gate_passes_for_both_padding_sides(exported, side):
    out, manifest = exported
    assert manifest["parity"][f"max_abs_diff_{side}_padding"] <= 1e-4


def test_reference_rewards_are_pytorch_logits(exported, tiny_llama):
    """Recompute the reference independently with transformers' own batch path (right padding)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    out, _ = exported
    rows = [json.loads(line) for line in (out / "reference.jsonl").read_text().splitlines()]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama).eval()
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.numpy()
    expected = np.array([r["rewards"] for r in rows])
    assert np.max(np.abs(logits - expected)) <= 1e-4


def test_left_padding_equals_no_padding_through_onnx(exported):
    import onnxruntime
    import safetensors.numpy

    out, manifest = exported
    session = onnxruntime.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    head = safetensors.numpy.load_file(str(out / "reward_head.safetensors"))
    rows = [json.loads(line) for line in (out / "reference.jsonl").read_text().splitlines()]
    seqs = [r["input_ids"] for r in rows]
    pad = manifest["tokenizer"]["pad_id"]
    alone = np.concatenate([export.onnx_rewards(session, head, [s], pad, "right") for s in seqs])
    left = export.onnx_rewards(session, head, seqs, pad, "left")
    assert np.max(np.abs(alone - left)) <= 1e-5


def test_multi_label_head_and_label_names(tmp_path):
    hf = tinymodels.make_llama_rm(tmp_path / "k3", num_labels=3, seed=4)
    manifest = export.export_model(hf, tmp_path / "out", log=quiet)
    assert manifest["head"]["shape"] == [3, 32]
    assert manifest["head"]["labels"] == ["objective_0", "objective_1", "objective_2"]
    row = json.loads((tmp_path / "out" / "reference.jsonl").read_text().splitlines()[0])
    assert len(row["rewards"]) == 3


def test_pad_equals_eos_keeps_transformers_rule(tmp_path):
    hf = tinymodels.make_llama_rm(tmp_path / "padeos", pad_token_id=2, seed=5)
    records = [{"id": "eos", "text": "Hello there</s>"}, {"id": "plain", "text": "The quick brown fox"}]
    manifest = export.export_model(hf, tmp_path / "out", records=records, log=quiet)
    assert manifest["last_token"] == "non_pad"
    assert manifest["parity"]["max_abs_diff_left_padding"] <= 1e-4


def test_parity_gate_rejects_a_wrong_head(tiny_llama, tmp_path, monkeypatch):
    real = export.head_tensors

    def perturbed(model):
        tensors = real(model)
        tensors["weight"] = tensors["weight"] * 1.01
        return tensors

    monkeypatch.setattr(export, "head_tensors", perturbed)
    with pytest.raises(export.ExportError, match="parity gate failed"):
        export.export_model(tiny_llama, tmp_path / "out", log=quiet)
    assert not (tmp_path / "out" / "rewardrt.json").exists(), "no manifest after a failed gate"


@pytest.mark.parametrize("arch", [a for a in tinymodels.TINY_CONFIGS if a != "llama"])
def test_architecture_exports_with_parity_at_both_padding_sides(arch, tmp_path):
    """Each supported family: the gate compares left- and right-padded ONNX rewards with PyTorch's unpadded ones
    (so for GPT-2, with learned absolute positions, left padding must equal no padding)."""
    hf = tinymodels.make_rm(tmp_path / arch, arch, seed=6)
    manifest = export.export_model(hf, tmp_path / "out", log=quiet)
    assert manifest["parity"]["max_abs_diff_right_padding"] <= 1e-4
    assert manifest["parity"]["max_abs_diff_left_padding"] <= 1e-4
    assert manifest["backbone"]["hidden_size"] == 32
    if os.environ.get("REWARDRT_BIN"):
        assert_rewardrt_verify_passes(tmp_path / "out")


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tinymodels.make_tokenizer().save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(export.ExportError, match=r"architecture `bert`.*supported: .*llama"):
        export.export_model(tmp_path, tmp_path / "out", log=quiet)


def test_cli_exit_status(tiny_llama, tmp_path):
    script = Path(export.__file__)
    ok = subprocess.run([sys.executable, str(script), "--model", str(tiny_llama), "--out", str(tmp_path / "a")])
    assert ok.returncode == 0
    bad = subprocess.run(
        [sys.executable, str(script), "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "no config.json" in bad.stderr


def test_external_data_is_kept_beside_the_graph(tiny_llama, tmp_path):
    """What large models (> 2 GiB) get automatically, forced here on a tiny one."""
    manifest = export.export_model(tiny_llama, tmp_path / "out", external_data=True, log=quiet)
    data = manifest["backbone"]["external_data"]
    assert data and (tmp_path / "out" / data).stat().st_size > 50_000, "the weights live in the data file"
    assert data in manifest["files"]
    if os.environ.get("REWARDRT_BIN"):
        assert_rewardrt_verify_passes(tmp_path / "out")


def test_parity_records_must_exercise_padding(tiny_llama, tmp_path):
    same = [{"id": "a", "text": "abc"}, {"id": "b", "text": "abd"}]
    with pytest.raises(export.ExportError, match="two different token lengths"):
        export.export_model(tiny_llama, tmp_path / "out", records=same, log=quiet)


def test_format_record_is_single_pass():
    got = export.format_record({"prompt": "say {response}", "response": "{prompt}"}, "U:{prompt} A:{response}")
    assert got == "U:say {response} A:{prompt}"


def assert_rewardrt_verify_passes(model_dir: Path):
    result = subprocess.run(
        [os.environ["REWARDRT_BIN"], "verify", "--model", str(model_dir), "--ep", "cpu"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


@pytest.mark.skipif(not os.environ.get("REWARDRT_BIN"), reason="REWARDRT_BIN not set")
def test_rewardrt_verify_passes_on_the_export(exported):
    assert_rewardrt_verify_passes(exported[0])
