"""The bundled model against its PyTorch checkpoint (``models/arith-rm-hf``): ``rewardrt eval`` gives the same
per-subset accuracy and margins as transformers on ``examples/arith-pairs.jsonl``.

Needs ``REWARDRT_BIN`` (``.ci/run`` sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not os.environ.get("REWARDRT_BIN"), reason="REWARDRT_BIN not set")


def pytorch_margins() -> dict[str, list[float]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = ROOT / "models" / "arith-rm-hf"
    tok = AutoTokenizer.from_pretrained(str(hf))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf)).eval()

    def reward(messages):
        ids = tok.apply_chat_template(messages, tokenize=True)["input_ids"]
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    margins: dict[str, list[float]] = {}
    for line in (ROOT / "examples" / "arith-pairs.jsonl").read_text().splitlines():
        row = json.loads(line)
        prompt = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        chosen = reward(prompt + [{"role": "assistant", "content": row["chosen"]}])
        rejected = reward(prompt + [{"role": "assistant", "content": row["rejected"]}])
        margins.setdefault(row["subset"], []).append(chosen - rejected)
    return margins


def test_eval_matches_pytorch_per_subset(tmp_path):
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [os.environ["REWARDRT_BIN"], "eval", "--model", str(ROOT / "models" / "arith-rm"), "--ep", "cpu",
         "--pairs", str(ROOT / "examples" / "arith-pairs.jsonl"), "--report", str(report_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    native = pytorch_margins()
    assert set(report["subsets"]) == set(native)
    for subset, margins in native.items():
        got = report["subsets"][subset]
        m = np.array(margins)
        assert got["pairs"] == len(m)
        assert got["accuracy"] == pytest.approx(float((m > 0).mean()), abs=0), subset
        assert got["margin"]["mean"] == pytest.approx(float(m.mean()), abs=1e-3)
        assert got["margin"]["p50"] == pytest.approx(float(np.median(m)), abs=1e-3)
        assert got["margin"]["p05"] == pytest.approx(float(np.quantile(m, 0.05)), abs=1e-3)
    every = np.concatenate([np.array(v) for v in native.values()])
    assert report["overall"]["accuracy"] == pytest.approx(float((every > 0).mean()), abs=0)
