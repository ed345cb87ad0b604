#!/usr/bin/env python3
"""Generate the small model directories the Rust tests use (tests/data/), from seeded random configs.

Reproduce (the files are checked in; rerun after changing the exporter or these configs)::

    python3 export/make_fixtures.py --out tests/data

* ``tiny-llama-k3``: a three-objective head (``num_labels = 3``), manifest padding side ``left``.
* ``tiny-llama-padeos``: pad id == eos id, with records that end in eos; the exporter keeps transformers'
  ``non_pad`` rule for it, and the reference rewards are PyTorch's.
* ``tiny-gpt2``: learned absolute positions, where left padding would shift every position without
  ``position_ids``.
* ``tiny-llama-probe``: ``--all-layers`` (per-layer hidden states, with PyTorch's in ``reference.jsonl``), a
  two-objective head whose checkpoint carries a bias, and OpenRLHF-style ``mean``/``std`` in its config.
* ``truncation/arith-rm.jsonl``: PyTorch rewards of the bundled model on left-truncated texts.
* ``tiny-llama-fp16`` / ``tiny-llama-int8``: the same random Llama as float16 and as dynamic int8, with the drift
  and preference flip rate the exporter measured in the manifest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import export  # noqa: E402
import tinymodels  # noqa: E402

PADEOS_RECORDS = [
    {"id": "ends-in-eos", "text": "Hello there, how are you today?</s>"},
    {"id": "ends-in-two-eos", "text": "The quick brown fox</s></s>"},
    {"id": "no-eos", "text": "The quick brown fox jumps over the lazy dog."},
    {"id": "pair", "prompt": "What is the capital of France?", "response": " Paris.</s>"},
    {"id": "short", "text": "a</s>"},
]


# Pairs sharing a prompt, so the reduced-precision flip rate is measured on preference pairs.
PAIR_RECORDS = [
    {"id": "capital-good", "prompt": "What is the capital of France?", "response": " Paris is the capital."},
    {"id": "capital-bad", "prompt": "What is the capital of France?", "response": " The quick brown fox."},
    {"id": "greet-good", "prompt": "Hello there,", "response": " how are you today?"},
    {"id": "greet-bad", "prompt": "Hello there,", "response": " 0123"},
    {"id": "fox-good", "prompt": "The quick brown fox", "response": " jumps over the lazy dog."},
    {"id": "fox-bad", "prompt": "The quick brown fox", "response": " is a reward model."},
    {"id": "text", "text": "An already formatted text record."},
]


TRUNCATION_CASES = [
    {"id": "long-prompt", "prompt": "What is 3+4? " * 9 + "What is 5+6?", "response": "11"},
    {"id": "long-conversation", "messages": [
        {"role": "user", "content": "What is 7*8? " * 6},
        {"role": "assistant", "content": "56"},
        {"role": "user", "content": "And what is 2+2?"},
        {"role": "assistant", "content": "4"}]},
    {"id": "fits", "prompt": "What is 1+1?", "response": "2"},
    {"id": "response-too-long", "prompt": "What is 1+1?", "response": "2 " * 70},
]


def truncation_references(hf_dir: Path, max_length: int, out: Path) -> None:
    """PyTorch rewards on left-truncated text, for the runtime's `--truncation left` (tests/it/truncation.rs).

    Independently of the runtime: render with transformers' chat template, find each prompt message's content in
    the text, cut the text from the start of the first prompt content up to the end of the k-th prompt token
    (the fewest whole tokens that make it fit), re-tokenize the shortened text and score it with PyTorch.
    """
    import json

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    rows = []
    for case in TRUNCATION_CASES:
        messages = case.get("messages") or [{"role": "user", "content": case["prompt"]},
                                            {"role": "assistant", "content": case["response"]}]
        text = tok.apply_chat_template(messages, tokenize=False)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        spans, cursor = [], 0
        for m in messages[:-1]:
            start = text.index(m["content"].strip(), cursor)
            spans.append((start, start + len(m["content"].strip())))
            cursor = spans[-1][1]
        excess = len(ids) - max_length
        row = {**case, "max_length": max_length}
        if excess <= 0:
            row.update(input_ids=ids, dropped=0)
        else:
            prompt_tokens = [t for t, (s, e) in enumerate(offsets) if s < e and any(a <= s and e <= b for a, b in spans)]
            if len(prompt_tokens) < excess:
                row["error"] = "response and template alone are too long"
                rows.append(row)
                continue
            dropped = prompt_tokens[:excess]
            # The shortened text: every dropped token's characters removed.
            keep = [t for t in range(len(ids)) if t not in set(dropped)]
            short = "".join(text[offsets[t][0]:offsets[t][1]] if offsets[t][0] < offsets[t][1] else tok.convert_ids_to_tokens(ids[t]) for t in keep)
            retok = tok(short, add_special_tokens=False)["input_ids"]
            assert retok == [ids[t] for t in keep], f"{case['id']}: token-level and text-level truncation differ"
            row.update(input_ids=retok, dropped=excess, truncated_text=short)
        with torch.no_grad():
            row["rewards"] = model(input_ids=torch.tensor([row["input_ids"]])).logits[0].tolist()
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        k3 = tinymodels.make_llama_rm(Path(tmp) / "tiny-llama-k3", num_labels=3, seed=1)
        export.export_model(k3, args.out / "tiny-llama-k3", padding_side="left", name="tiny-llama-k3")
        padeos = tinymodels.make_llama_rm(Path(tmp) / "tiny-llama-padeos", pad_token_id=2, seed=2)
        manifest = export.export_model(
            padeos, args.out / "tiny-llama-padeos", records=PADEOS_RECORDS, name="tiny-llama-padeos"
        )
        assert manifest["last_token"] == "non_pad", manifest["last_token"]
        gpt2 = tinymodels.make_rm(Path(tmp) / "tiny-gpt2", "gpt2", seed=3)
        export.export_model(gpt2, args.out / "tiny-gpt2", name="tiny-gpt2")
        probe = tinymodels.make_llama_rm(Path(tmp) / "tiny-llama-probe", num_labels=2, seed=4, mean=[0.5, -1.0],
                                         std=[2.0, 0.25])
        tinymodels.add_head_bias(probe, [0.75, -0.5])
        manifest = export.export_model(probe, args.out / "tiny-llama-probe", all_layers=True, name="tiny-llama-probe")
        assert manifest["head"]["bias"] == "bias" and manifest["head"]["normalization"], manifest["head"]
        source = tinymodels.make_llama_rm(Path(tmp) / "tiny-llama", seed=5)
        for suffix, options in (("fp16", {"dtype": "float16"}), ("int8", {"quantize": "int8"})):
            export.export_model(source, args.out / f"tiny-llama-{suffix}", records=PAIR_RECORDS,
                                name=f"tiny-llama-{suffix}", **options)
    truncation_references(Path(__file__).resolve().parents[1] / "models" / "arith-rm-hf", 64,
                          args.out / "truncation" / "arith-rm.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
