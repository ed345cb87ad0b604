#!/usr/bin/env python3
"""Export a local Hugging Face reward model to a rewardrt model directory.

A reward model scores a (prompt, response) pair as ``r = h_last . W_r^T (+ b)``. This script splits a
``*ForSequenceClassification`` model into the two artefacts the Rust runtime consumes:

* ``backbone.onnx``: the Transformer body, inputs ``input_ids``, ``attention_mask`` and ``position_ids``,
  output ``last_hidden_state`` ``[batch, seq, hidden]`` (after the final norm), dynamic batch and sequence axes;
* ``reward_head.safetensors``: the score head ``weight`` ``[k, hidden]`` (and ``bias`` ``[k]`` if any), float32;

plus ``tokenizer.json`` (+ ``tokenizer_config.json`` when present), ``rewardrt.json`` (the manifest: the contract
with ``src/manifest.rs``) and ``reference.jsonl`` (records with the rewards PyTorch computed for them).

Before declaring success it runs a parity gate: ONNX Runtime backbone + last-position selection + the stored head
against the PyTorch model's logits, on one mixed-length batch padded on the right and again on the left. Above
the tolerance (1e-4 absolute) it exits non-zero and writes no manifest.

Usage::

    python3 export/export.py --model HF_DIR --out OUT_DIR [--template '{prompt}{response}'] [--records FILE.jsonl]

No model hub is contacted: ``HF_DIR`` must be a local directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1
EXPORTER_VERSION = "0.1.0"
DEFAULT_TOLERANCE = 1e-4
OPSET = 18

# model_type -> attribute of the *ForSequenceClassification model that holds the score head. Each is tested on a
# tiny random config at both padding sides (export/tests). GPT-2 has learned absolute positions: `position_ids`
# is a graph input, so left padding gives the same positions, and the same reward, as no padding.
SUPPORTED = {
    "llama": "score",
    "mistral": "score",
    "qwen2": "score",
    "qwen3": "score",
    "gemma2": "score",
    "gpt2": "score",
    "gpt_neox": "score",
    "phi3": "score",
}

HIDDEN_OUTPUT = "last_hidden_state"
INPUTS = ["input_ids", "attention_mask", "position_ids"]

# Probe records for the parity gate when the caller gives none: mixed lengths on purpose.
DEFAULT_RECORDS = [
    {"id": "probe-0", "prompt": "Hello", "response": "Hi there."},
    {"id": "probe-1", "prompt": "What is the capital of France?", "response": "Paris is the capital of France."},
    {"id": "probe-2", "prompt": "Say something", "response": "a"},
    {
        "id": "probe-3",
        "prompt": "Write a sentence about rewards and models and tokens that is a little longer than the others",
        "response": "Reward models score a prompt and response pair with a single number read at the last token.",
    },
    {"id": "probe-4", "text": "An already formatted text record."},
]


class ExportError(Exception):
    """An export that cannot proceed; the message says what and where."""


@dataclass
class Tokenized:
    record: dict
    text: str
    ids: list[int]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def format_record(record: dict, template: str) -> str:
    """The formatting stage, mirrored by ``src/format.rs``: ``text`` as is, else the template."""
    if "text" in record:
        return record["text"]
    # One left-to-right pass, so braces inside the prompt or response are never re-interpreted.
    fields = {"{prompt}": record["prompt"], "{response}": record["response"]}
    return re.sub(r"\{prompt\}|\{response\}", lambda m: fields[m.group(0)], template)


def jsonl_rows(path: Path):
    """``(line number, value)`` for each non-blank line of a JSONL file; invalid JSON is an ``ExportError``
    naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise ExportError(f"{path}:{line_no}: invalid JSON: {e}") from e


def read_records(path: Path) -> list[dict]:
    records = []
    for line_no, record in jsonl_rows(path):
        if "text" not in record and "messages" not in record and not ("prompt" in record and "response" in record):
            raise ExportError(f"{path}:{line_no}: record needs `text`, `messages`, or both `prompt` and `response`")
        record.setdefault("id", f"{path.stem}-{line_no}")
        records.append(record)
    return records


def source_chat_template(model_dir: Path) -> str | None:
    """The source model's chat template, where transformers finds it: ``chat_template.jinja``, else
    ``tokenizer_config.json``'s ``chat_template``."""
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return template
    return None


def without_double_bos(ids: list[int], bos_id: int | None, added: bool) -> list[int]:
    """The runtime's double-BOS rule (``src/batch.rs``): when the tokenizer added BOS to a text that already
    starts with one, drop the extra one."""
    if added and bos_id is not None and len(ids) >= 2 and ids[0] == ids[1] == bos_id:
        return ids[1:]
    return ids


def load_hf_model(model_dir: Path):
    """Load a local *ForSequenceClassification model in float32 with eager attention (exportable, exact)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir}: no config.json (a local Hugging Face model directory is required)")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    if config.model_type not in SUPPORTED:
        archs = ", ".join(sorted(SUPPORTED))
        raise ExportError(
            f"{model_dir}: architecture `{config.model_type}` ({(config.architectures or ['?'])[0]}) is not "
            f"supported; supported: {archs}"
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model


def make_backbone(model, all_layers: bool = False):
    """Wrap the base model so the graph returns the final-norm hidden states for every position.

    With ``all_layers`` it also returns transformers' ``hidden_states`` tuple (embeddings, then each layer; the
    last entry is the top layer after the final norm), as outputs ``hidden_states.0`` .. ``hidden_states.L``.
    """
    import torch

    class Backbone(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, input_ids, attention_mask, position_ids):
            out = self.body(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                output_hidden_states=all_layers,
            )
            if all_layers:
                return (out.last_hidden_state, *out.hidden_states)
            return out.last_hidden_state

    return Backbone(model.base_model).eval()


def layer_output_names(config) -> list[str]:
    """``hidden_states.0`` (embeddings) .. ``hidden_states.L`` (top layer), as transformers numbers them."""
    return [f"hidden_states.{i}" for i in range(int(config.num_hidden_layers) + 1)]


def checkpoint_tensor(model_dir: Path, name: str):
    """Tensor ``name`` from the checkpoint's safetensors files, or None."""
    from safetensors import safe_open

    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    return None


def attach_checkpoint_bias(model, model_dir: Path, log) -> bool:
    """Some reward models were trained with a bias on the score head, which transformers' head (``bias=False``)
    drops on load. When the checkpoint has one, rebuild the head with it, so the PyTorch reference (and the
    exported head) is the model the checkpoint describes. Returns True when a bias was attached."""
    import torch

    attr = SUPPORTED[model.config.model_type]
    head = getattr(model, attr)
    if getattr(head, "bias", None) is not None:
        return False
    bias = checkpoint_tensor(model_dir, f"{attr}.bias")
    if bias is None:
        return False
    if tuple(bias.shape) != (head.out_features,):
        raise ExportError(f"{model_dir}: `{attr}.bias` has shape {tuple(bias.shape)}, expected ({head.out_features},)")
    patched = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        patched.weight.copy_(head.weight)
        patched.bias.copy_(bias.float())
    setattr(model, attr, patched.eval())
    log(f"score head: using `{attr}.bias` from the checkpoint (transformers' head has no bias and would drop it)")
    return True


def normalization_of(config, num_labels: int):
    """Reward normalisation stats carried by the source config (OpenRLHF stores ``mean``/``std``), or None."""
    for mean_key, std_key in (("mean", "std"), ("reward_mean", "reward_std")):
        mean, std = getattr(config, mean_key, None), getattr(config, std_key, None)
        if mean is None or std is None:
            continue
        mean = [float(x) for x in (mean if isinstance(mean, (list, tuple)) else [mean])]
        std = [float(x) for x in (std if isinstance(std, (list, tuple)) else [std])]
        if len(mean) == 1:
            mean = mean * num_labels
        if len(std) == 1:
            std = std * num_labels
        if len(mean) != num_labels or len(std) != num_labels or not all(x > 0 for x in std):
            raise ExportError(
                f"config `{mean_key}`/`{std_key}` must be one value or {num_labels}, with std > 0: {mean}, {std}"
            )
        return {"mean": mean, "std": std, "source": f"config.json `{mean_key}`/`{std_key}`"}
    return None


def head_tensors(model) -> dict:
    """The score head as float32 numpy arrays: ``weight`` [k, hidden], optional ``bias`` [k]."""
    head = getattr(model, SUPPORTED[model.config.model_type])
    tensors = {"weight": head.weight.detach().float().contiguous().numpy()}
    if getattr(head, "bias", None) is not None:
        tensors["bias"] = head.bias.detach().float().contiguous().numpy()
    return tensors


def position_ids_for(mask):
    """Positions count real tokens only, so left padding changes nothing (mirrors ``src/batch.rs``)."""
    import numpy as np

    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 1, pos, 0).astype(np.int64)


def pad_batch(seqs: list[list[int]], pad_id: int, side: str):
    import numpy as np

    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        start = 0 if side == "right" else width - len(seq)
        ids[row, start : start + len(seq)] = seq
        mask[row, start : start + len(seq)] = 1
    return ids, mask


def last_positions(ids, mask, rule: str, pad_id: int):
    """The scored position per row, as ``src/select.rs`` chooses it.

    ``mask``: the last position whose attention mask is 1. ``non_pad``: the rightmost real position whose id is
    not the pad id, which is what transformers' ``*ForSequenceClassification`` does.
    """
    import numpy as np

    keep = mask == 1 if rule == "mask" else (mask == 1) & (ids != pad_id)
    width = mask.shape[1]
    return width - 1 - np.argmax(keep[:, ::-1], axis=1)


def onnx_rewards(session, head: dict, seqs: list[list[int]], pad_id: int, side: str, rule: str = "mask"):
    import numpy as np

    ids, mask = pad_batch(seqs, pad_id, side)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_for(mask)}
    hidden = session.run([HIDDEN_OUTPUT], feeds)[0]
    last = hidden[np.arange(len(seqs)), last_positions(ids, mask, rule, pad_id)]
    rewards = last @ head["weight"].T
    if "bias" in head:
        rewards = rewards + head["bias"]
    return rewards


def onnx_layer_states(session, names: list[str], seqs: list[list[int]], pad_id: int, side: str, rule: str):
    """Each layer's hidden state at each sequence's scored position: ``[layers, batch, hidden]``."""
    import numpy as np

    ids, mask = pad_batch(seqs, pad_id, side)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_for(mask)}
    rows, cols = np.arange(len(seqs)), last_positions(ids, mask, rule, pad_id)
    return np.stack([h[rows, cols] for h in session.run(names, feeds)])


def torch_layer_states(model, seqs: list[list[int]], pad_id: int, rule: str):
    """The native reference for ``--all-layers``: transformers' ``hidden_states``, each sequence alone."""
    import numpy as np
    import torch

    out = []
    with torch.no_grad():
        for seq in seqs:
            hs = model.base_model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
            ids, mask = np.array([seq]), np.ones((1, len(seq)), dtype=np.int64)
            pos = int(last_positions(ids, mask, rule, pad_id)[0])
            out.append(np.stack([h[0, pos].float().numpy() for h in hs]))
    return np.stack(out, axis=1)


def ort_session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def preference_pairs(records: list[dict]) -> tuple[list[tuple[int, int]], str]:
    """Pairs for the flip rate, and where they came from: records that share a prompt (chosen/rejected style);
    with no shared prompts, every pair of records."""
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if "prompt" in r:
            by_prompt.setdefault(r["prompt"], []).append(i)
    pairs = [(a, b) for group in by_prompt.values() for n, a in enumerate(group) for b in group[n + 1 :]]
    if pairs:
        return pairs, "records sharing a prompt"
    return [(a, b) for a in range(len(records)) for b in range(a + 1, len(records))], "every pair of records"


def flip_rate(reference, got, pairs) -> tuple[int, int]:
    """(flips, comparisons): pairs, per label, whose preference (sign of the difference) differs from the
    reference's. Exact reference ties are not counted."""
    import numpy as np

    flips = total = 0
    for a, b in pairs:
        ref = np.sign(reference[a] - reference[b])
        new = np.sign(got[a] - got[b])
        counted = ref != 0
        total += int(counted.sum())
        flips += int((counted & (ref != new)).sum())
    return flips, total


def drift(got, reference) -> dict:
    import numpy as np

    diff = np.abs(got - reference)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


def save_graph(model_proto, path: Path, external: bool) -> None:
    import onnx

    kwargs = {}
    if external:
        kwargs = {"save_as_external_data": True, "all_tensors_to_one_file": True, "location": path.name + ".data"}
    onnx.save_model(model_proto, str(path), **kwargs)


def convert_precision(src: Path, dst: Path, dtype: str, quantize: str | None, external: bool) -> str:
    """Write a reduced-precision copy of the float32 graph ``src`` to ``dst``; returns a description."""
    import onnx

    if dtype == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # Inputs are int64 and the output stays float32 (cast at the end), so the runtime's contract is unchanged.
        converted = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        save_graph(converted, dst, external)
        return "float16 weights and activations, float32 output"
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=external)
        return "int8 dynamic quantisation (ONNX Runtime): int8 weights, activations quantised per run"
    raise AssertionError("no precision change requested")


def optimize_graph(src: Path, dst: Path, config, external: bool) -> dict:
    """ONNX Runtime's transformer optimiser (Python fusions only, hardware-neutral); returns fused-op counts."""
    from onnxruntime.transformers import optimizer

    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    optimized = optimizer.optimize_model(
        str(src), model_type="gpt2", num_heads=heads, hidden_size=int(config.hidden_size), opt_level=0
    )
    optimized.save_model_to_file(str(dst), use_external_data_format=external)
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}


def torch_rewards(model, seqs: list[list[int]]):
    """The native reference: each sequence alone, unpadded, through the full PyTorch model."""
    import numpy as np
    import torch

    out = []
    with torch.no_grad():
        for seq in seqs:
            logits = model(input_ids=torch.tensor([seq], dtype=torch.long)).logits
            out.append(logits[0].float().numpy())
    return np.stack(out)


def special_id(config, name: str):
    value = getattr(config, f"{name}_token_id", None)
    if isinstance(value, list):
        value = value[0]
    return value


DTYPES = ("float32", "float16")
QUANTIZE = ("int8",)
# Default tolerance of `rewardrt verify` for reduced-precision graphs, relative to the largest reference reward
# (at least 1): what fp16 and int8 usually keep on a well-conditioned model. The measured drift is recorded too.
REDUCED_TOLERANCE = {"float16": 5e-3, "int8": 5e-2}


def export_model(
    model_dir: Path,
    out_dir: Path,
    *,
    template: str = "{prompt}{response}",
    records: list[dict] | None = None,
    padding_side: str = "right",
    max_length: int | None = None,
    add_special_tokens: bool = True,
    external_data: bool | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str | None = None,
    all_layers: bool = False,
    dtype: str = "float32",
    quantize: str | None = None,
    optimize: bool = False,
    precision_tolerance: float | None = None,
    chat_template: bool | None = None,
    log=print,
) -> dict:
    """Export ``model_dir`` into ``out_dir`` and return the manifest. Raises ExportError on any failure."""
    import numpy as np
    import onnx
    import onnxruntime
    import safetensors.numpy
    import tokenizers
    import torch
    import transformers

    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    if "{response}" not in template and template:
        raise ExportError(f"--template `{template}` has no {{response}} placeholder")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype `{dtype}` is not one of {', '.join(DTYPES)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"--quantize `{quantize}` is not one of {', '.join(QUANTIZE)}")
    if quantize and dtype != "float32":
        raise ExportError("--quantize int8 starts from the float32 graph; do not combine it with --dtype float16")
    model = load_hf_model(model_dir)
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json (a fast tokenizer is required)")
    attach_checkpoint_bias(model, model_dir, log)
    config = model.config
    hidden_size = int(config.hidden_size)
    num_labels = int(config.num_labels)
    labels = [config.id2label.get(i, f"LABEL_{i}") for i in range(num_labels)] if config.id2label else None
    if num_labels == 1:
        labels = ["reward"]
    normalization = normalization_of(config, num_labels)

    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    pad_id = special_id(config, "pad")
    bos_id = special_id(config, "bos")
    eos_id = special_id(config, "eos")
    # transformers scores the rightmost token that is not the pad id. When pad == eos that skips a trailing eos,
    # and the model was trained that way, so the manifest keeps that rule; otherwise the mask rule (which
    # scores a trailing eos) gives the same positions and is immune to id collisions.
    last_token = "non_pad" if pad_id is not None and pad_id == eos_id else "mask"
    if pad_id is None:
        # transformers then scores the last position; ours only needs a valid id, masked out everywhere.
        pad_id = eos_id if eos_id is not None else 0
    if max_length is None:
        max_length = int(getattr(config, "max_position_embeddings", 2048))

    source_template = source_chat_template(model_dir)
    if chat_template is None:
        chat_template = source_template is not None
    if chat_template and source_template is None:
        raise ExportError(f"{model_dir}: --chat-template needs a chat template (chat_template.jinja or "
                          "tokenizer_config.json `chat_template`)")
    hf_tokenizer = None
    if source_template is not None:
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

    records = [dict(r) for r in (records or DEFAULT_RECORDS)]
    for i, r in enumerate(records):
        r.setdefault("id", f"record-{i}")
    tokenized = []
    for r in records:
        # Chat-templated records are tokenized by transformers itself (apply_chat_template: no added special
        # tokens), so the reference ids are what transformers feeds the model; text is mirrored from the runtime.
        if "messages" in r or ("text" not in r and chat_template):
            if hf_tokenizer is None:
                raise ExportError(f"record {r['id']}: `messages` records need a chat template and the model has none")
            messages = r.get("messages") or [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["response"]},
            ]
            text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            out = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
            ids = list(out["input_ids"] if hasattr(out, "keys") else out)
        else:
            text = format_record(r, template)
            ids = tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
            ids = without_double_bos(ids, bos_id, add_special_tokens)
        if not ids:
            raise ExportError(f"record {r['id']}: tokenizes to no tokens")
        if len(ids) > max_length:
            raise ExportError(f"record {r['id']}: {len(ids)} tokens exceed max_length {max_length}")
        tokenized.append(Tokenized(r, text, ids))
    if len({len(t.ids) for t in tokenized}) < 2:
        raise ExportError("parity records must have at least two different token lengths, so padding is exercised")

    tmp = Path(tempfile.mkdtemp(prefix="rewardrt-export-"))
    try:
        # 1. Backbone graph (float32; reduced precision is derived from it after the gate).
        fp32_dir = tmp / "float32"
        fp32_dir.mkdir()
        backbone = make_backbone(model, all_layers)
        layer_names = layer_output_names(config) if all_layers else []
        example = pad_batch([[1, 2, 3, 4, 5], [1, 2, 3]], pad_id, "right")
        example_pos = position_ids_for(example[1])
        args = tuple(torch.from_numpy(a) for a in (example[0], example[1], example_pos))
        dims = {0: "batch", 1: "sequence"}
        log(f"exporting backbone of {model_dir} ({config.model_type}, hidden {hidden_size}, {num_labels} label(s))")
        with warnings.catch_warnings():
            # The exporter warns that two axes share a name; they are meant to (one batch, one sequence axis).
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape.*")
            program = torch.onnx.export(
                backbone,
                args,
                input_names=INPUTS,
                output_names=[HIDDEN_OUTPUT, *layer_names],
                dynamic_shapes={name: dims for name in INPUTS},
                dynamo=True,
                opset_version=OPSET,
                verbose=False,
            )
            graph_path = fp32_dir / "backbone.onnx"
            # None: weights go to `backbone.onnx.data` only when the model exceeds protobuf's 2 GiB limit.
            program.save(str(graph_path), external_data=external_data)
        external = (fp32_dir / "backbone.onnx.data").is_file()
        onnx.checker.check_model(str(graph_path))

        # 2. Head, tokenizer files.
        head = head_tensors(model)
        safetensors.numpy.save_file(head, str(tmp / "reward_head.safetensors"), metadata={"format": "rewardrt"})
        head = safetensors.numpy.load_file(str(tmp / "reward_head.safetensors"))  # gate the stored artefact
        shutil.copy(tokenizer_path, tmp / "tokenizer.json")
        # Carried along when the source has them: the chat template lives in one of these.
        carried = {}
        for key, file in (("config_file", "tokenizer_config.json"), ("chat_template_file", "chat_template.jinja")):
            if (model_dir / file).is_file():
                shutil.copy(model_dir / file, tmp / file)
                carried[key] = file

        # 3. Parity gate: PyTorch (each record alone) vs ORT (one padded batch, both sides).
        seqs = [t.ids for t in tokenized]
        reference = torch_rewards(model, seqs)
        layer_reference = torch_layer_states(model, seqs, pad_id, last_token) if all_layers else None

        def gate(path: Path, what: str) -> dict:
            """Parity of the graph at ``path``; raises ExportError above the tolerance."""
            session = ort_session(path)
            result = {}

            def check(key: str, diff: float, what_diff: str) -> None:
                result[key] = diff
                log(f"{what}: {what_diff} = {diff:.3e}")
                if not diff <= tolerance:
                    raise ExportError(f"{what} failed: {what_diff} = {diff:.3e} > {tolerance:.0e}")

            for side in ("right", "left"):
                got = onnx_rewards(session, head, seqs, pad_id, side, last_token)
                check(f"max_abs_diff_{side}_padding", float(np.max(np.abs(got - reference))),
                      f"max |onnx - torch| with {side} padding ({len(seqs)} records)")
                if layer_names:
                    states = onnx_layer_states(session, layer_names, seqs, pad_id, side, last_token)
                    check(f"max_abs_diff_layers_{side}_padding", float(np.max(np.abs(states - layer_reference))),
                          f"max |onnx - torch| over {len(layer_names)} layer states with {side} padding")
            return result

        parity = {"tolerance": tolerance, "records": len(seqs), **gate(graph_path, "parity gate")}

        # 4. Optional: the transformer optimiser's fusions, kept only if the gate still passes.
        optimization = None
        if optimize:
            opt_dir = tmp / "optimized"
            opt_dir.mkdir()
            fused = optimize_graph(graph_path, opt_dir / "backbone.onnx", config, external)
            try:
                opt_parity = gate(opt_dir / "backbone.onnx", "parity gate (optimised graph)")
                graph_path = opt_dir / "backbone.onnx"
                optimization = {"kept": True, "fused_operators": fused, "parity": opt_parity}
            except ExportError as e:
                log(f"optimised graph rejected, keeping the unoptimised one: {e}")
                optimization = {"kept": False, "fused_operators": fused, "reason": str(e)}

        # 5. Optional reduced precision, from the gated float32 graph; drift and preference flips are measured.
        precision = {"dtype": dtype, "quantization": quantize}
        if dtype != "float32" or quantize:
            fp32_rewards = onnx_rewards(ort_session(graph_path), head, seqs, pad_id, "right", last_token)
            reduced_dir = tmp / "reduced"
            reduced_dir.mkdir()
            description = convert_precision(graph_path, reduced_dir / "backbone.onnx", dtype, quantize, external)
            graph_path = reduced_dir / "backbone.onnx"
            try:
                session = ort_session(graph_path)
            except Exception as e:  # onnxruntime raises its own exception types
                raise ExportError(f"the {description} graph does not load in ONNX Runtime (CPU): {e}") from e
            pairs, pair_source = preference_pairs([t.record for t in tokenized])
            worst = {}
            for side in ("right", "left"):
                got = onnx_rewards(session, head, seqs, pad_id, side, last_token)
                if not np.all(np.isfinite(got)):
                    raise ExportError(f"the {description} graph produces non-finite rewards")
                worst[side] = got
            got = worst["right"]
            # Dynamic int8 quantises activations with one scale per tensor, i.e. per batch: a reward then depends
            # slightly on its batch neighbours and padding. Measured against each record scored alone.
            alone = np.concatenate([onnx_rewards(session, head, [q], pad_id, "right", last_token) for q in seqs])
            batch_dependence = max(float(np.max(np.abs(worst[side] - alone))) for side in worst)
            flips, comparisons = flip_rate(reference, got, pairs)
            scale = max(1.0, float(np.max(np.abs(reference))))
            verify_tolerance = precision_tolerance or REDUCED_TOLERANCE[quantize or dtype] * scale
            precision.update(
                {
                    "description": description,
                    "drift_vs_pytorch": drift(got, reference),
                    "drift_vs_pytorch_left_padding": drift(worst["left"], reference),
                    "drift_vs_onnx_float32": drift(got, fp32_rewards),
                    "drift_vs_pytorch_batch_of_one": drift(alone, reference),
                    "batch_dependence_max_abs": batch_dependence,
                    "pairs": comparisons,
                    "pair_source": pair_source,
                    "flips": flips,
                    "flip_rate": flips / comparisons if comparisons else None,
                    "verify_tolerance": verify_tolerance,
                }
            )
            d = precision["drift_vs_pytorch"]
            log(
                f"{description}: drift vs PyTorch max {d['max_abs']:.3e} mean {d['mean_abs']:.3e}; "
                f"flip rate {flips}/{comparisons} preference pairs; batch dependence {batch_dependence:.3e}"
            )
            worst_drift = max(
                precision[k]["max_abs"]
                for k in ("drift_vs_pytorch", "drift_vs_pytorch_left_padding", "drift_vs_pytorch_batch_of_one")
            )
            if worst_drift > verify_tolerance:
                raise ExportError(
                    f"the {description} graph drifts {worst_drift:.3e} from PyTorch, above the precision tolerance "
                    f"{verify_tolerance:.3e} (raise it with --precision-tolerance if that is acceptable)"
                )

        # 6. Reference records with the rewards PyTorch computed.
        with open(tmp / "reference.jsonl", "w", encoding="utf-8") as f:
            for i, (t, r) in enumerate(zip(tokenized, reference)):
                row = {k: v for k, v in t.record.items() if k in ("id", "prompt", "response", "text", "messages")}
                row["input_ids"] = t.ids
                row["rewards"] = [float(x) for x in r]
                if layer_reference is not None:
                    # PyTorch's hidden_states[n] at the scored token, for `rewardrt verify` to check each layer.
                    row["layer_states"] = layer_reference[:, i, :].tolist()
                f.write(json.dumps(row) + "\n")

        graph_files = ["backbone.onnx"] + (["backbone.onnx.data"] if (graph_path.parent / "backbone.onnx.data").is_file() else [])
        for f in graph_files:
            shutil.copy(graph_path.parent / f, tmp / f)
        files = [*graph_files, "reward_head.safetensors", "tokenizer.json", "reference.jsonl"]
        files += carried.values()
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name or model_dir.name,
            "architecture": (config.architectures or [type(model).__name__])[0],
            "backbone": {
                "file": "backbone.onnx",
                "external_data": graph_files[1] if len(graph_files) > 1 else None,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids"},
                "output": HIDDEN_OUTPUT,
                "layer_outputs": layer_names or None,
                "hidden_size": hidden_size,
                "dtype": dtype,
                "quantization": quantize,
            },
            "head": {
                "file": "reward_head.safetensors",
                "weight": "weight",
                "bias": "bias" if "bias" in head else None,
                "shape": [num_labels, hidden_size],
                "labels": labels,
                "normalization": normalization,
            },
            "tokenizer": {
                "file": "tokenizer.json",
                "config_file": carried.get("config_file"),
                "chat_template_file": carried.get("chat_template_file"),
                "add_special_tokens": add_special_tokens,
                "pad_id": int(pad_id),
                "bos_id": None if bos_id is None else int(bos_id),
                "eos_id": None if eos_id is None else int(eos_id),
            },
            "format": {"template": template, "chat_template": bool(chat_template)},
            "padding_side": padding_side,
            "last_token": last_token,
            "max_length": int(max_length),
            "reference": "reference.jsonl",
            "parity": parity,
            "precision": precision,
            "optimization": optimization,
            "exporter": {
                "name": "rewardrt-export",
                "version": EXPORTER_VERSION,
                "opset": OPSET,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "files": {f: sha256_file(tmp / f) for f in files},
        }
        with open(tmp / "rewardrt.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")

        out_dir.mkdir(parents=True, exist_ok=True)
        for f in [*files, "rewardrt.json"]:
            shutil.copy(tmp / f, out_dir / f)
        log(f"wrote {out_dir}")
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="local Hugging Face *ForSequenceClassification directory")
    parser.add_argument("--out", required=True, type=Path, help="model directory to write")
    parser.add_argument("--template", default="{prompt}{response}", help="text format for prompt/response records "
                        "(when the model has no chat template, or with --no-chat-template)")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false", default=None,
                        help="format prompt/response records with --template even though the model has a chat template")
    parser.add_argument("--records", type=Path, help="JSONL records for the parity gate and reference.jsonl")
    parser.add_argument("--padding-side", choices=["right", "left"], default="right", help="runtime default padding side")
    parser.add_argument("--max-length", type=int, help="token limit (default: max_position_embeddings)")
    parser.add_argument("--no-special-tokens", action="store_true", help="do not add the tokenizer's special tokens")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="parity gate, max absolute difference")
    parser.add_argument("--name", help="model name in the manifest (default: the directory name)")
    parser.add_argument(
        "--external-data",
        action="store_true",
        default=None,
        help="store weights in backbone.onnx.data beside the graph (automatic above 2 GiB)",
    )
    parser.add_argument(
        "--all-layers",
        action="store_true",
        help="also output every layer's hidden states (hidden_states.0 .. hidden_states.L) for probing",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="graph precision (float16: for GPUs)")
    parser.add_argument("--quantize", choices=QUANTIZE, help="dynamic int8 quantisation (for CPU and edge)")
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="apply ONNX Runtime's transformer fusions; kept only if the parity gate still passes",
    )
    parser.add_argument(
        "--precision-tolerance",
        type=float,
        help="max |reward - PyTorch| accepted for --dtype float16 / --quantize int8 (default: 5e-3 / 5e-2 times "
        "the largest reference reward, at least 1); also what `rewardrt verify` uses for it",
    )
    args = parser.parse_args(argv)
    try:
        export_model(
            args.model,
            args.out,
            template=args.template,
            records=read_records(args.records) if args.records else None,
            padding_side=args.padding_side,
            max_length=args.max_length,
            add_special_tokens=not args.no_special_tokens,
            external_data=args.external_data,
            tolerance=args.tolerance,
            name=args.name,
            all_layers=args.all_layers,
            dtype=args.dtype,
            quantize=args.quantize,
            optimize=args.optimize,
            precision_tolerance=args.precision_tolerance,
            chat_template=args.chat_template,
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
