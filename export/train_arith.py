#!/usr/bin/env python3
"""Train the bundled reward model `arith-rm` and export it with export.py.

The task is synthetic and checkable: the prompt asks for ``a+b``, ``a-b`` or ``a*b`` with operands 0..12, a
response is a number, and the preferred response is the correct one (the wrong one is off by a small or a
tens-sized amount). A tiny Llama-architecture ``LlamaForSequenceClassification`` (hidden 64, 3 layers) is trained
from scratch with the Bradley-Terry pairwise loss ``-log sigmoid(r(chosen) - r(rejected))``. About 10% of the
problems (chosen by a hash of the problem) are held out and never seen in training; the pairwise accuracy on
fresh pairs of those problems is written to ``training.json`` next to the exported model. Getting a held-out
problem right takes more than memorising: the model has to carry over structure such as ``a*b = b*a``.

Chat-like format (the manifest's template): ``<|user|>{prompt}<|assistant|>{response}<|end|>``; the tokenizer
adds ``<s>`` in front, and ``<|end|>`` is the end-of-turn (eos) token the model is trained to score.

Reproduce the shipped model (CPU, seeded, a few minutes) and its PyTorch checkpoint::

    python3 export/train_arith.py --out models/arith-rm --hf-out models/arith-rm-hf

Re-export the shipped checkpoint without training (after an exporter change)::

    python3 export/train_arith.py --out models/arith-rm --from-hf models/arith-rm-hf
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import export  # noqa: E402

TEMPLATE = "<|user|>{prompt}<|assistant|>{response}<|end|>"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
PAD, BOS, EOS_TURN = 0, 1, 6


def is_held_out(a: int, op: str, b: int) -> bool:
    return zlib.crc32(f"{a}{op}{b}".encode()) % 10 == 0


MAX_OPERAND = 12
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def operator_of(prompt: str) -> str:
    return re.fullmatch(r"What is (\d+)([-+*])(\d+)\?", prompt).group(2)


def make_pair(rng: random.Random, held_out: bool):
    """One (prompt, correct, wrong) triple from the requested side of the split."""
    while True:
        a, b, op = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND), rng.choice("+-*")
        if is_held_out(a, op, b) == held_out:
            break
    correct = OPS[op](a, b)
    delta = rng.choice([1, -1, 2, -2, 10, -10, 9, -9, 11, -11, rng.randint(-50, 50) or 3])
    return f"What is {a}{op}{b}?", str(correct), str(correct + delta)


def make_tokenizer(rng: random.Random):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Digit runs stay whole and every number the task uses becomes one token, as in tokenizers that keep
    # numbers of up to three digits together (Llama 3's, for one).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    corpus = [str(n) for n in range(MAX_OPERAND * MAX_OPERAND + 60)] * 5
    for _ in range(2000):
        prompt, good, bad = make_pair(rng, held_out=False)
        corpus += [prompt, good, bad]
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, s
    split = [n for n in range(MAX_OPERAND * MAX_OPERAND + 1) if len(tok.encode(str(n), add_special_tokens=False).ids) != 1]
    assert not split, f"numbers not single tokens: {split}"
    return tok


def encode(tok, prompt: str, response: str) -> list[int]:
    return tok.encode(export.format_record({"prompt": prompt, "response": response}, TEMPLATE)).ids


def batch_tensors(seqs: list[list[int]]):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def rewards(model, tok, prompts, responses):
    ids, mask = batch_tensors([encode(tok, p, r) for p, r in zip(prompts, responses)])
    return model(input_ids=ids, attention_mask=mask).logits[:, 0]


def write_examples(path: Path, rng: random.Random, problems: int = 10) -> None:
    """Held-out problems, each with its correct and one wrong response, as scoring input records."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, problems + 1):
            prompt, good, bad = make_pair(rng, held_out=True)
            for kind, response in (("correct", good), ("wrong", bad)):
                f.write(json.dumps({"id": f"p{i:02d}-{kind}", "prompt": prompt, "response": response}) + "\n")


SUBSETS = {"+": "addition", "-": "subtraction", "*": "multiplication"}


def write_pairs(path: Path, rng: random.Random, per_subset: int = 40) -> None:
    """Held-out chosen/rejected pairs in RewardBench's format, one subset per operator; every third row gives its
    prompt as `messages` (the same conversation, through the other input shape)."""
    rows = {op: [] for op in OPS}
    while any(len(r) < per_subset for r in rows.values()):
        prompt, good, bad = make_pair(rng, held_out=True)
        op = operator_of(prompt)
        if len(rows[op]) < per_subset:
            rows[op].append((prompt, good, bad))
    with open(path, "w", encoding="utf-8") as f:
        for op, triples in rows.items():
            for i, (prompt, good, bad) in enumerate(triples):
                row = {"id": f"{SUBSETS[op]}-{i:02d}", "subset": SUBSETS[op]}
                if i % 3 == 2:
                    row["messages"] = [{"role": "user", "content": prompt}]
                else:
                    row["prompt"] = prompt
                row.update({"chosen": good, "rejected": bad})
                f.write(json.dumps(row) + "\n")


def reference_records(seed: int) -> list[dict]:
    """Held-out correct/wrong pairs (sharing a prompt) and one pre-formatted text: the exporter's parity records."""
    ref_rng = random.Random(seed + 2)
    records = []
    for i in range(12):
        prompt, good, bad = make_pair(ref_rng, held_out=True)
        records.append({"id": f"ref-{i}-correct", "prompt": prompt, "response": good})
        records.append({"id": f"ref-{i}-wrong", "prompt": prompt, "response": bad})
    records.append({"id": "ref-text", "text": export.format_record({"prompt": "What is 7+5?", "response": "12"}, TEMPLATE)})
    return records


def write_tokenizer_config(hf_dir: Path) -> None:
    """Special tokens and the chat template (``export/templates/arith.jinja``): the same text as TEMPLATE, with
    BOS written by the template, as transformers' ``apply_chat_template`` expects."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|end|>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "chat_template": (Path(__file__).resolve().parent / "templates" / "arith.jinja").read_text(),
    }
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def export_bundled(hf_dir: Path, out: Path, seed: int) -> None:
    export.export_model(hf_dir, out, template=TEMPLATE, records=reference_records(seed), max_length=64, name="arith-rm",
                        chat_template=(Path(hf_dir) / "tokenizer_config.json").is_file())


def main(argv=None) -> int:
    global MAX_OPERAND
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write (exported)")
    parser.add_argument("--hf-out", type=Path, help="also keep the trained Hugging Face model here")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128, help="pairs per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-operand", type=int, default=MAX_OPERAND)
    parser.add_argument("--write-examples", type=Path, help="only write held-out example records to this JSONL file")
    parser.add_argument("--from-hf", type=Path, help="skip training: export this trained checkpoint to --out")
    parser.add_argument("--write-pairs", type=Path, help="only write held-out chosen/rejected pairs (RewardBench format)")
    args = parser.parse_args(argv)
    if args.write_examples:
        write_examples(args.write_examples, random.Random(args.seed + 3))
        return 0
    if args.write_pairs:
        write_pairs(args.write_pairs, random.Random(args.seed + 4))
        return 0
    if args.from_hf:
        export_bundled(args.from_hf, args.out, args.seed)
        return 0

    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    MAX_OPERAND = args.max_operand
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tok = make_tokenizer(rng)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        num_labels=1,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS_TURN,
        architectures=["LlamaForSequenceClassification"],
    )
    model = LlamaForSequenceClassification(config)
    model.config._attn_implementation = "sdpa"  # same math as eager, faster to train; the export uses eager
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)),
    )
    eval_rng = random.Random(args.seed + 1)
    held_out = [make_pair(eval_rng, held_out=True) for _ in range(2000)]

    def accuracy(pairs) -> tuple[float, dict]:
        """Pairwise accuracy overall and per operator (a tie counts as wrong)."""
        model.eval()
        with torch.no_grad():
            prompts = [p for p, _, _ in pairs]
            good = rewards(model, tok, prompts, [g for _, g, _ in pairs])
            bad = rewards(model, tok, prompts, [b for _, _, b in pairs])
        model.train()
        right = (good > bad).tolist()
        per_op = {}
        for op in OPS:
            hits = [r for (p, _, _), r in zip(pairs, right) if operator_of(p) == op]
            per_op[op] = {"pairs": len(hits), "accuracy": round(sum(hits) / max(len(hits), 1), 4)}
        return sum(right) / len(right), per_op

    start = time.time()
    model.train()
    for step in range(args.steps):
        pairs = [make_pair(rng, held_out=False) for _ in range(args.batch)]
        prompts = [p for p, _, _ in pairs]
        r = rewards(model, tok, prompts + prompts, [g for _, g, _ in pairs] + [b for _, _, b in pairs])
        loss = -torch.nn.functional.logsigmoid(r[: args.batch] - r[args.batch :]).mean()
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    train_seconds = time.time() - start
    held_out_accuracy, per_op = accuracy(held_out)
    print(f"held-out pairwise accuracy: {held_out_accuracy:.4f} on {len(held_out)} pairs; per operator {per_op}")

    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = args.hf_out or Path(tmp) / "arith-rm-hf"
        model.save_pretrained(hf_dir)
        tok.save(str(Path(hf_dir) / "tokenizer.json"))
        write_tokenizer_config(Path(hf_dir))
        export_bundled(hf_dir, args.out, args.seed)

    stats = {
        "seed": args.seed,
        "steps": args.steps,
        "pairs_per_step": args.batch,
        "train_seconds": round(train_seconds, 1),
        "final_loss": round(loss.item(), 4),
        "held_out_pairs": len(held_out),
        "held_out_pairwise_accuracy": round(held_out_accuracy, 4),
        "held_out_by_operator": per_op,
        "max_operand": MAX_OPERAND,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
