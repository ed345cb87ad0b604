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
    return 0


if __name__ == "__main__":
    sys.exit(main())
