#!/usr/bin/env python3
"""Compare rewardrt with the native PyTorch model on the same records: accuracy, speed and memory in one table.

The same records go through ``transformers``' ``AutoModelForSequenceClassification`` (the Hugging Face model
the rewardrt directory was exported from; conversations through its ``apply_chat_template``, as a transformers
user scores them) and through the ``rewardrt`` binary, each in its own child process
so that peak memory (max RSS) is measured the same way for both. Both sides use the same intra-op thread count,
batch size, length-sorted batching and CPU, and both are timed from records to rewards (formatting and
tokenizing included, model loading excluded), best of ``--repeat`` runs; the model-only rate (formatting and
tokenizing excluded) is reported too.

Printed (and written with ``--json``): max and mean |r_rewardrt - r_pytorch|, Spearman rank correlation,
pairwise-preference agreement on pairs (rows ``{"prompt", "chosen", "rejected"}``, or records sharing a
prompt), sequences/s of each side and the ratio, peak memory of each.

Usage::

    python3 export/compare_native.py --hf models/arith-rm-hf --model models/arith-rm --input examples/arith.jsonl

Records are ``{"prompt", "response"}`` or ``{"text"}`` (formatted with the model directory's template, as
rewardrt does), or RewardBench-style pairs ``{"prompt", "chosen", "rejected"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import export  # noqa: E402


class CompareError(Exception):
    """A comparison that cannot run; the message says what and where."""


def read_input(path: Path) -> tuple[list[dict], list[tuple[int, int]]]:
    """Records to score and preference pairs (index of preferred, index of the other) among them."""
    records: list[dict] = []
    pairs: list[tuple[int, int]] = []
    for line_no, row in export.jsonl_rows(path):
        rid = row.get("id", f"line-{line_no}")
        if "chosen" in row and "rejected" in row and "prompt" in row:
            pairs.append((len(records), len(records) + 1))
            records.append({"id": f"{rid}/chosen", "prompt": row["prompt"], "response": row["chosen"]})
            records.append({"id": f"{rid}/rejected", "prompt": row["prompt"], "response": row["rejected"]})
        elif "text" in row or ("prompt" in row and "response" in row):
            records.append(dict(row, id=rid))
        else:
            raise CompareError(
                f"{path}:{line_no}: needs `text`, `prompt` and `response`, or `prompt`, `chosen` and `rejected`"
            )
    if not records:
        raise CompareError(f"{path}: no records")
    if not pairs:
        # No explicit pairs: records sharing a prompt, in file order (the first is not assumed preferred; the
        # agreement only asks whether both backends order them the same way).
        by_prompt: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            if "prompt" in r:
                by_prompt.setdefault(r["prompt"], []).append(i)
        pairs = [(a, b) for group in by_prompt.values() for n, a in enumerate(group) for b in group[n + 1 :]]
    return records, pairs


def spearman(a, b) -> float:
    """Spearman rank correlation with average ranks for ties."""
    import numpy as np

    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # average the ranks of tied values
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[int, float, str]:
    """Run ``cmd``; returns (exit status, peak RSS of the child in MiB, stderr)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return proc.returncode, usage.ru_maxrss * 1.0 / (1024 * 1024) * scale, stderr


def torch_worker(spec_path: Path) -> int:
    """Child process: score the records with the native model; writes rewards and timings to spec['out']."""
    spec = json.loads(spec_path.read_text())
    import numpy as np
    import tokenizers
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(spec["hf"], local_files_only=True, dtype=torch.float32)
    model.eval()
    export.attach_checkpoint_bias(model, Path(spec["hf"]), log=lambda *_: None)
    tok = tokenizers.Tokenizer.from_file(spec["tokenizer"])
    tok.no_padding()
    tok.no_truncation()
    chat = None
    if spec["chat_template"]:
        from transformers import AutoTokenizer

        chat = AutoTokenizer.from_pretrained(spec["hf"], local_files_only=True)
    pad_id, batch_size, records = spec["pad_id"], spec["batch_size"], spec["records"]

    def encode(record):
        """As a transformers user would: the chat template for conversations, the text template otherwise."""
        if "text" not in record and (chat is not None or "messages" in record):
            messages = record.get("messages") or [
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["response"]},
            ]
            out = chat.apply_chat_template(messages, tokenize=True)
            return list(out["input_ids"] if hasattr(out, "keys") else out)
        text = record["text"] if "text" in record else export.format_record(record, spec["template"])
        ids = tok.encode(text, add_special_tokens=spec["add_special_tokens"]).ids
        return export.without_double_bos(ids, spec["bos_id"], spec["add_special_tokens"])

    def score_all():
        started = time.perf_counter()
        ids = [encode(r) for r in records]
        encoding = time.perf_counter() - started
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # length-sorted batches, as rewardrt does
        out = [None] * len(ids)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                members = order[start : start + batch_size]
                width = max(len(ids[i]) for i in members)
                input_ids = torch.full((len(members), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(members), width), dtype=torch.long)
                for row, i in enumerate(members):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = model(input_ids=input_ids, attention_mask=mask).logits.float().numpy()
                for row, i in enumerate(members):
                    out[i] = logits[row].tolist()
        return out, encoding

    score_all()  # warm-up
    best, best_encoding = float("inf"), 0.0
    for _ in range(spec["repeat"]):
        started = time.perf_counter()
        rewards, encoding = score_all()
        elapsed = time.perf_counter() - started
        if elapsed < best:
            best, best_encoding = elapsed, encoding
    Path(spec["out"]).write_text(
        json.dumps({"rewards": rewards, "seconds": best, "model_seconds": best - best_encoding,
                    "torch": torch.__version__, "threads": torch.get_num_threads()})
    )
    return 0


def find_rewardrt(explicit: str | None) -> str:
    if explicit:
        return explicit
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo / "target" / "release" / "rewardrt", shutil.which("rewardrt")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise CompareError("no rewardrt binary: build it with `cargo build --release` or pass --rewardrt PATH")


def compare(hf: Path, model: Path, input_path: Path, *, threads: int, batch_size: int, repeat: int,
            bench_records: int, rewardrt: str, log=print) -> dict:
    import numpy as np

    manifest = json.loads((model / "rewardrt.json").read_text())
    records, pairs = read_input(input_path)
    template = manifest.get("format", {}).get("template", "{prompt}{response}")
    keep = ("prompt", "response", "messages", "text")
    plain = [{k: v for k, v in r.items() if k in keep} for r in records]
    timed = [plain[i % len(plain)] for i in range(max(bench_records, len(plain)))]

    with tempfile.TemporaryDirectory(prefix="rewardrt-compare-") as tmp:
        tmp = Path(tmp)
        # PyTorch, in a child process.
        spec = {
            "hf": str(hf),
            "tokenizer": str(model / manifest["tokenizer"]["file"]),
            "add_special_tokens": manifest["tokenizer"].get("add_special_tokens", True),
            "pad_id": manifest["tokenizer"]["pad_id"],
            "bos_id": manifest["tokenizer"].get("bos_id"),
            "template": template,
            "chat_template": manifest.get("format", {}).get("chat_template", False),
            "records": timed,
            "threads": threads,
            "batch_size": batch_size,
            "repeat": repeat,
            "out": str(tmp / "torch.json"),
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        log(f"PyTorch: scoring {len(timed)} records ({threads} thread(s), batch {batch_size}, best of {repeat}) ...")
        status, torch_rss, stderr = run_measured([sys.executable, __file__, "--torch-worker", str(tmp / "spec.json")])
        if status != 0:
            raise CompareError(f"the PyTorch side failed (exit {status}):\n{stderr[-2000:]}")
        native = json.loads((tmp / "torch.json").read_text())

        # rewardrt, the same records: it formats them itself (chat template or text template).
        with open(tmp / "input.jsonl", "w", encoding="utf-8") as f:
            for i, record in enumerate(timed):
                f.write(json.dumps({"id": i, **record}) + "\n")
        log(f"rewardrt: scoring {len(timed)} records ...")
        runs = []
        for _ in range(repeat + 1):  # the first run warms the page cache and is not counted
            cmd = [rewardrt, "score", "--model", str(model), "--input", str(tmp / "input.jsonl"),
                   "--output", str(tmp / "rewardrt.jsonl"), "--ep", "cpu", "--threads", str(threads),
                   "--batch-size", str(batch_size), "--stats", str(tmp / "stats.json")]
            status, rss, stderr = run_measured(cmd)
            if status != 0:
                raise CompareError(f"rewardrt failed (exit {status}):\n{stderr[-2000:]}")
            runs.append((json.loads((tmp / "stats.json").read_text()), rss))
        runs = runs[1:]
        stats = min((s for s, _ in runs), key=lambda s: s["score_seconds"])
        rt_rss = max(rss for _, rss in runs)
        got = [json.loads(line) for line in (tmp / "rewardrt.jsonl").read_text().splitlines()]

    n = len(records)
    ours = np.array([g.get("rewards", [g.get("reward")]) for g in got[:n]], dtype=np.float64)
    theirs = np.array(native["rewards"][:n], dtype=np.float64)
    diff = np.abs(ours - theirs)
    agree = [
        bool(np.all(np.sign(ours[a] - ours[b]) == np.sign(theirs[a] - theirs[b]))) for a, b in pairs
    ]
    rt_rate = len(timed) / stats["score_seconds"]
    torch_rate = len(timed) / native["seconds"]
    return {
        "model": str(model),
        "hf": str(hf),
        "input": str(input_path),
        "records": n,
        "labels": ours.shape[1],
        "timed_records": len(timed),
        "threads": threads,
        "batch_size": batch_size,
        "device": "cpu",
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "spearman": [spearman(ours[:, k], theirs[:, k]) for k in range(ours.shape[1])],
        "pairs": len(pairs),
        "pairwise_agreement": (sum(agree) / len(agree)) if agree else None,
        "rewardrt": {
            "sequences_per_second": rt_rate,
            "model_sequences_per_second": len(timed) / stats["model_seconds"],
            "seconds": stats["score_seconds"],
            "peak_rss_mib": rt_rss,
            "execution_provider": stats["execution_provider"],
        },
        "pytorch": {
            "sequences_per_second": torch_rate,
            "model_sequences_per_second": len(timed) / native["model_seconds"],
            "seconds": native["seconds"],
            "peak_rss_mib": torch_rss,
            "torch": native["torch"],
            "threads": native["threads"],
        },
        "speedup": rt_rate / torch_rate,
        "model_speedup": (len(timed) / stats["model_seconds"]) / (len(timed) / native["model_seconds"]),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} logical CPUs",
    }


def render(result: dict) -> str:
    spearman = ", ".join(f"{s:.6f}" for s in result["spearman"])
    agreement = "n/a (no pairs)" if result["pairwise_agreement"] is None else (
        f"{result['pairwise_agreement']:.4f} ({result['pairs']} pairs)"
    )
    rt, pt = result["rewardrt"], result["pytorch"]
    rows = [
        ("records", f"{result['records']} ({result['labels']} label(s)); timed on {result['timed_records']}"),
        ("threads / batch", f"{result['threads']} intra-op thread(s) on both sides, batch {result['batch_size']}"),
        ("max |Δr|", f"{result['max_abs_diff']:.3e}"),
        ("mean |Δr|", f"{result['mean_abs_diff']:.3e}"),
        ("Spearman", spearman),
        ("pairwise agreement", agreement),
        ("seq/s rewardrt", f"{rt['sequences_per_second']:.1f} ({rt['execution_provider']})"),
        ("seq/s PyTorch", f"{pt['sequences_per_second']:.1f} (torch {pt['torch']})"),
        ("speed ratio", f"{result['speedup']:.2f}x rewardrt / PyTorch (records to rewards)"),
        ("model-only seq/s", f"{rt['model_sequences_per_second']:.1f} / {pt['model_sequences_per_second']:.1f} = "
                             f"{result['model_speedup']:.2f}x (formatting and tokenizing excluded)"),
        ("peak RSS rewardrt", f"{rt['peak_rss_mib']:.0f} MiB"),
        ("peak RSS PyTorch", f"{pt['peak_rss_mib']:.0f} MiB"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--torch-worker":
        return torch_worker(Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", required=True, type=Path, help="the Hugging Face model directory (native side)")
    parser.add_argument("--model", required=True, type=Path, help="the rewardrt model directory exported from it")
    parser.add_argument("--input", required=True, type=Path, help="JSONL records or chosen/rejected pairs")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="intra-op threads, both sides")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (best counts)")
    parser.add_argument("--bench-records", type=int, default=2000, help="cycle the records to this many for timing")
    parser.add_argument("--rewardrt", help="rewardrt binary (default: target/release/rewardrt, then PATH)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        result = compare(
            args.hf, args.model, args.input, threads=args.threads, batch_size=args.batch_size, repeat=args.repeat,
            bench_records=args.bench_records, rewardrt=find_rewardrt(args.rewardrt),
            log=lambda m: print(m, file=sys.stderr),
        )
    except (CompareError, export.ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
