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


def assert_left_padding_equals_no_padding(out: Path, manifest: dict):
    import onnxruntime
    import safetensors.numpy

    session = onnxruntime.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    head = safetensors.numpy.load_file(str(out / "reward_head.safetensors"))
    rows = [json.loads(line) for line in (out / "reference.jsonl").read_text().splitlines()]
    seqs = [r["input_ids"] for r in rows]
    assert len({len(s) for s in seqs}) > 1, "left padding must really happen"
    pad, rule = manifest["tokenizer"]["pad_id"], manifest["last_token"]
    alone = np.concatenate([export.onnx_rewards(session, head, [s], pad, "right", rule) for s in seqs])
    left = export.onnx_rewards(session, head, seqs, pad, "left", rule)
    assert np.max(np.abs(alone - left)) <= 1e-5


def test_left_padding_equals_no_padding_through_onnx(exported):
    out, manifest = exported
    assert_left_padding_equals_no_padding(out, manifest)


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
    assert_left_padding_equals_no_padding(tmp_path / "out", manifest)
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


def test_all_layers_outputs_every_hidden_state(tiny_llama, tmp_path):
    import onnx

    manifest = export.export_model(tiny_llama, tmp_path / "out", all_layers=True, log=quiet)
    names = ["hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert manifest["backbone"]["layer_outputs"] == names
    graph = onnx.load(str(tmp_path / "out" / "backbone.onnx")).graph
    assert [o.name for o in graph.output] == ["last_hidden_state", *names]
    for side in ("right", "left"):
        assert manifest["parity"][f"max_abs_diff_layers_{side}_padding"] <= 1e-4
    row = json.loads((tmp_path / "out" / "reference.jsonl").read_text().splitlines()[0])
    assert len(row["layer_states"]) == 3 and len(row["layer_states"][0]) == 32
    if os.environ.get("REWARDRT_BIN"):
        assert_rewardrt_verify_passes(tmp_path / "out")


@pytest.mark.parametrize("options", [{"dtype": "float16"}, {"quantize": "int8"}], ids=["float16", "int8"])
def test_reduced_precision_records_drift_and_flip_rate(tiny_llama, tmp_path, options):
    records = [
        {"id": "a-good", "prompt": "What is the capital of France?", "response": " Paris."},
        {"id": "a-bad", "prompt": "What is the capital of France?", "response": " The quick brown fox jumps."},
        {"id": "b-good", "prompt": "Hello", "response": " there, how are you today?"},
        {"id": "b-bad", "prompt": "Hello", "response": " 0123"},
    ]
    manifest = export.export_model(tiny_llama, tmp_path / "out", records=records, log=quiet, **options)
    p = manifest["precision"]
    assert p["dtype"] == options.get("dtype", "float32") and p["quantization"] == options.get("quantize")
    assert manifest["backbone"]["dtype"] == p["dtype"] and manifest["backbone"]["quantization"] == p["quantization"]
    assert p["pairs"] == 2 and p["pair_source"] == "records sharing a prompt"
    assert 0.0 <= p["flip_rate"] <= 1.0
    assert 0 < p["drift_vs_pytorch"]["max_abs"] <= p["verify_tolerance"]
    assert p["drift_vs_onnx_float32"]["max_abs"] > 0, "the graph really changed precision"
    if options.get("dtype") == "float16":
        import onnx

        graph = onnx.load(str(tmp_path / "out" / "backbone.onnx")).graph
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
        assert p["batch_dependence_max_abs"] <= 1e-5
    if os.environ.get("REWARDRT_BIN"):
        assert_rewardrt_verify_passes(tmp_path / "out")


def test_precision_gate_rejects_excess_drift(tiny_llama, tmp_path):
    with pytest.raises(export.ExportError, match="drifts .* above the precision tolerance"):
        export.export_model(tiny_llama, tmp_path / "out", quantize="int8", precision_tolerance=1e-6, log=quiet)
    assert not (tmp_path / "out" / "rewardrt.json").exists()


def test_quantize_and_float16_do_not_combine(tiny_llama, tmp_path):
    with pytest.raises(export.ExportError, match="do not combine"):
        export.export_model(tiny_llama, tmp_path / "out", quantize="int8", dtype="float16", log=quiet)


def test_optimizer_pass_is_kept_only_with_parity(tiny_llama, tmp_path):
    manifest = export.export_model(tiny_llama, tmp_path / "out", optimize=True, log=quiet)
    opt = manifest["optimization"]
    assert opt["kept"] and opt["fused_operators"], opt
    assert opt["parity"]["max_abs_diff_left_padding"] <= 1e-4


def test_optimizer_pass_failing_the_gate_is_dropped(tiny_llama, tmp_path, monkeypatch):
    real = export.optimize_graph

    def breaking(src, dst, config, external):
        import onnx
        import numpy as np
        from onnx import numpy_helper

        fused = real(src, dst, config, external)
        model = onnx.load(str(dst))
        big = max(model.graph.initializer, key=lambda t: len(t.raw_data) if t.raw_data else 0)
        big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * np.float32(1.5), big.name))
        onnx.save(model, str(dst))
        return fused

    monkeypatch.setattr(export, "optimize_graph", breaking)
    manifest = export.export_model(tiny_llama, tmp_path / "out", optimize=True, log=quiet)
    assert manifest["optimization"]["kept"] is False
    assert "parity gate" in manifest["optimization"]["reason"]
    assert manifest["parity"]["max_abs_diff_right_padding"] <= 1e-4


def test_checkpoint_bias_and_normalisation_stats(tmp_path):
    hf = tinymodels.make_llama_rm(tmp_path / "hf", seed=7, mean=0.25, std=4.0)
    tinymodels.add_head_bias(hf, [1.5])
    manifest = export.export_model(hf, tmp_path / "out", log=quiet)
    assert manifest["head"]["bias"] == "bias"
    assert manifest["head"]["normalization"] == {"mean": [0.25], "std": [4.0], "source": "config.json `mean`/`std`"}
    without = export.export_model(tinymodels.make_llama_rm(tmp_path / "hf2", seed=7), tmp_path / "out2", log=quiet)
    assert without["head"]["bias"] is None and without["head"]["normalization"] is None
    with_bias = [json.loads(line)["rewards"][0] for line in (tmp_path / "out" / "reference.jsonl").read_text().splitlines()]
    no_bias = [json.loads(line)["rewards"][0] for line in (tmp_path / "out2" / "reference.jsonl").read_text().splitlines()]
    assert np.allclose(np.array(with_bias) - np.array(no_bias), 1.5, atol=1e-5), "PyTorch's reference includes the bias"


@pytest.mark.skipif(not os.environ.get("REWARDRT_BIN"), reason="REWARDRT_BIN not set")
def test_compare_native_reports_parity_speed_and_memory(exported, tiny_llama, tmp_path):
    import compare_native

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " The quick brown fox."},
                {"prompt": "Hello", "chosen": " there, how are you?", "rejected": " 0123"},
                {"prompt": "Say something", "chosen": " a", "rejected": " Reward models score pairs."},
            ]
        )
        + "\n"
    )
    out = tmp_path / "compare.json"
    script = Path(compare_native.__file__)
    cmd = [sys.executable, str(script), "--hf", str(tiny_llama), "--model", str(exported[0]), "--input", str(pairs),
           "--threads", "1", "--repeat", "1", "--bench-records", "60", "--rewardrt", os.environ["REWARDRT_BIN"],
           "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pairwise agreement" in result.stdout and "1 intra-op thread(s) on both sides" in result.stdout
    report = json.loads(out.read_text())
    assert report["records"] == 6 and report["pairs"] == 3 and report["timed_records"] == 60
    assert report["max_abs_diff"] <= 1e-4
    assert report["spearman"][0] > 0.999
    assert report["pairwise_agreement"] == 1.0
    assert report["pytorch"]["threads"] == 1 and report["threads"] == 1
    for side in ("rewardrt", "pytorch"):
        assert report[side]["sequences_per_second"] > 0 and report[side]["peak_rss_mib"] > 1
    assert report["speedup"] == pytest.approx(
        report["rewardrt"]["sequences_per_second"] / report["pytorch"]["sequences_per_second"]
    )


def test_compare_native_input_errors_name_the_line(tmp_path):
    import compare_native

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "only a prompt"}\n')
    with pytest.raises(compare_native.CompareError, match=r"bad.jsonl:2: needs"):
        compare_native.read_input(bad)
    bad.write_text('\n{"prompt": "p", "response": "r"}\n{not json\n')
    with pytest.raises(compare_native.export.ExportError, match=r"bad.jsonl:3: invalid JSON"):
        compare_native.read_input(bad)


def test_spearman_handles_ties():
    import compare_native

    assert compare_native.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert compare_native.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert compare_native.spearman([1, 1, 2, 3], [5, 5, 6, 7]) == pytest.approx(1.0)


def test_chat_template_model_exports_transformers_ids(tmp_path):
    hf = tinymodels.make_llama_rm(tmp_path / "hf", seed=8)
    template = (Path(export.__file__).parent / "templates" / "mistral.jinja").read_text()
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "<pad>", "chat_template": template}
    (hf / "tokenizer_config.json").write_text(json.dumps(config))
    records = [
        {"id": "pair", "prompt": "What is the capital of France?", "response": "Paris."},
        {"id": "conv", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Hello"},
                                    {"role": "assistant", "content": "Hi there."}]},
        {"id": "text", "text": "<s> [INST] Hello [/INST] Hi</s>"},
    ]
    manifest = export.export_model(hf, tmp_path / "out", records=records, log=quiet)
    assert manifest["format"]["chat_template"] is True
    assert manifest["tokenizer"]["config_file"] == "tokenizer_config.json"
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "out" / "reference.jsonl").read_text().splitlines()}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf))
    expected = tok.apply_chat_template(records[1]["messages"], tokenize=True)["input_ids"]
    assert rows["conv"]["input_ids"] == list(expected) and rows["conv"]["messages"] == records[1]["messages"]
    assert rows["pair"]["input_ids"][0] == 1 and rows["pair"]["input_ids"][1] != 1, "one BOS, from the template"
    assert rows["text"]["input_ids"][:2] != [1, 1], "the text record's doubled BOS is removed"
    if os.environ.get("REWARDRT_BIN"):
        assert_rewardrt_verify_passes(tmp_path / "out")
    no_chat = export.export_model(hf, tmp_path / "out2", records=records[:1] + records[2:] + [
        {"id": "long", "prompt": "The quick brown fox jumps", "response": "over the lazy dog"}], chat_template=False,
        log=quiet)
    assert no_chat["format"]["chat_template"] is False
