#!/usr/bin/env python3
"""Golden token ids for chat templates, from transformers' own ``apply_chat_template`` (tests/it/chat.rs).

For each template family in ``export/templates`` (ChatML/Qwen, Llama-3, Gemma, Mistral-style) this writes a
small tokenizer with that family's special tokens and BOS behaviour, its ``tokenizer_config.json`` (template +
special tokens), and ``goldens.jsonl``: conversations with the rendered text and the ids transformers gives for
``apply_chat_template(messages, tokenize=True, add_generation_prompt=False)``, or the error message its template
raises. The bundled model's template (``models/arith-rm-hf``) gets goldens too. The Rust tests must reproduce
every id and every error.

Reproduce (the files are checked in)::

    python3 export/make_template_goldens.py --out tests/data/chat-templates
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tinymodels  # noqa: E402

# family -> (special tokens, BOS the tokenizer adds or None, special-token map for tokenizer_config.json)
FAMILIES = {
    "chatml": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        None,
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    ),
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    ),
    "gemma": (
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "<bos>",
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    ),
    "mistral": (
        ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        "<s>",
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    ),
}

CONVERSATIONS = [
    ("pair", [{"role": "user", "content": "What is the capital of France?"},
              {"role": "assistant", "content": "Paris."}]),
    ("system", [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}]),
    ("multi-turn-unicode", [{"role": "user", "content": "  Say café – naïve ✓ {x}  "},
                            {"role": "assistant", "content": "café\n\nnaïve ✓"},
                            {"role": "user", "content": "And {{ braces }} and {% tags %}?"},
                            {"role": "assistant", "content": " Literal: {{ braces }} {% tags %} "}]),
    ("not-alternating", [{"role": "user", "content": "one"},
                         {"role": "user", "content": "two"},
                         {"role": "assistant", "content": "three"}]),
    ("unknown-role", [{"role": "user", "content": "q"},
                      {"role": "tool", "content": "42"}]),
]


def make_tokenizer(specials: list[str], bos: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = tinymodels.CORPUS + [c["content"] for _, conv in CONVERSATIONS for c in conv]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok


def goldens(model_dir: Path) -> list[dict]:
    from jinja2.exceptions import TemplateError
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    rows = []
    for name, messages in CONVERSATIONS:
        row = {"id": name, "messages": messages}
        try:
            row["text"] = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
            row["input_ids"] = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            # What a user who tokenizes the rendered text with special tokens gets: a doubled BOS when the
            # template writes BOS and the tokenizer adds one.
            row["input_ids_text_with_special_tokens"] = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
        except TemplateError as e:
            row["error"] = str(e)
        rows.append(row)
    return rows


def write(dir_: Path, rows: list[dict]) -> None:
    with open(dir_ / "goldens.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/chat-templates"))
    parser.add_argument("--bundled", type=Path, default=HERE.parent / "models" / "arith-rm-hf")
    args = parser.parse_args(argv)
    for family, (specials, bos, special_map) in FAMILIES.items():
        out = args.out / family
        out.mkdir(parents=True, exist_ok=True)
        make_tokenizer(specials, bos).save(str(out / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "chat_template": (HERE / "templates" / f"{family}.jinja").read_text(),
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        write(out, goldens(out))
    bundled = args.out / "arith-rm"
    bundled.mkdir(parents=True, exist_ok=True)
    write(bundled, goldens(args.bundled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
