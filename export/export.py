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


def read_records(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExportError(f"{path}:{line_no}: invalid JSON: {e}") from e
            if "text" not in record and not ("prompt" in record and "response" in record):
                raise ExportError(f"{path}:{line_no}: record needs `text` or both `prompt` and `response`")
            record.setdefault("id", f"{path.stem}-{line_no}")
            records.append(record)
    return records


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


def make_backbone(model):
    """Wrap the base model so the graph returns the final-norm hidden states for every position."""
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
            )
            return out.last_hidden_state

    return Backbone(model.base_model).eval()


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
    model = load_hf_model(model_dir)
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json (a fast tokenizer is required)")
    config = model.config
    hidden_size = int(config.hidden_size)
    num_labels = int(config.num_labels)
    labels = [config.id2label.get(i, f"LABEL_{i}") for i in range(num_labels)] if config.id2label else None
    if num_labels == 1:
        labels = ["reward"]

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

    records = [dict(r) for r in (records or DEFAULT_RECORDS)]
    for i, r in enumerate(records):
        r.setdefault("id", f"record-{i}")
    tokenized = []
    for r in records:
        text = format_record(r, template)
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        if not ids:
            raise ExportError(f"record {r['id']}: tokenizes to no tokens")
        if len(ids) > max_length:
            raise ExportError(f"record {r['id']}: {len(ids)} tokens exceed max_length {max_length}")
        tokenized.append(Tokenized(r, text, ids))
    if len({len(t.ids) for t in tokenized}) < 2:
        raise ExportError("parity records must have at least two different token lengths, so padding is exercised")

    tmp = Path(tempfile.mkdtemp(prefix="rewardrt-export-"))
    try:
        # 1. Backbone graph.
        backbone = make_backbone(model)
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
                output_names=[HIDDEN_OUTPUT],
                dynamic_shapes={name: dims for name in INPUTS},
                dynamo=True,
                opset_version=OPSET,
                verbose=False,
            )
            backbone_path = tmp / "backbone.onnx"
            # None: weights go to `backbone.onnx.data` only when the model exceeds protobuf's 2 GiB limit.
            program.save(str(backbone_path), external_data=external_data)
        external = [p.name for p in tmp.iterdir() if p.name.startswith("backbone.onnx") and p.name != "backbone.onnx"]
        onnx.checker.check_model(str(backbone_path))

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
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(backbone_path), options, providers=["CPUExecutionProvider"])
        parity = {"tolerance": tolerance, "records": len(seqs)}
        for side in ("right", "left"):
            got = onnx_rewards(session, head, seqs, pad_id, side, last_token)
            diff = float(np.max(np.abs(got - reference)))
            parity[f"max_abs_diff_{side}_padding"] = diff
            log(f"parity ({side} padding, {len(seqs)} records): max |onnx - torch| = {diff:.3e}")
            if not diff <= tolerance:
                raise ExportError(
                    f"parity gate failed with {side} padding: max |onnx - torch| = {diff:.3e} > {tolerance:.0e}"
                )

        # 4. Reference records with the rewards PyTorch computed.
        with open(tmp / "reference.jsonl", "w", encoding="utf-8") as f:
            for t, r in zip(tokenized, reference):
                row = {k: v for k, v in t.record.items() if k in ("id", "prompt", "response", "text")}
                row["input_ids"] = t.ids
                row["rewards"] = [float(x) for x in r]
                f.write(json.dumps(row) + "\n")

        files = ["backbone.onnx", *external, "reward_head.safetensors", "tokenizer.json", "reference.jsonl"]
        files += carried.values()
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name or model_dir.name,
            "architecture": (config.architectures or [type(model).__name__])[0],
            "backbone": {
                "file": "backbone.onnx",
                "external_data": external[0] if external else None,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids"},
                "output": HIDDEN_OUTPUT,
                "hidden_size": hidden_size,
                "dtype": "float32",
            },
            "head": {
                "file": "reward_head.safetensors",
                "weight": "weight",
                "bias": "bias" if "bias" in head else None,
                "shape": [num_labels, hidden_size],
                "labels": labels,
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
            "format": {"template": template},
            "padding_side": padding_side,
            "last_token": last_token,
            "max_length": int(max_length),
            "reference": "reference.jsonl",
            "parity": parity,
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
    parser.add_argument("--template", default="{prompt}{response}", help="text format for prompt/response records")
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
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
