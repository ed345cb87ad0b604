"""Tiny Hugging Face reward models built from a config, for tests and fixtures (no hub, seeded).

``make_tokenizer`` trains a small BPE tokenizer with ``tokenizers``; ``make_rm`` saves a randomly initialised
``*ForSequenceClassification`` of a supported architecture with it into a local directory that ``export.py``
accepts.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CORPUS = [
    "Hello there, how are you today?",
    "What is the capital of France? Paris is the capital of France.",
    "Reward models score a prompt and response pair with a single number read at the last token.",
    "The quick brown fox jumps over the lazy dog.",
    "An already formatted text record.",
    "Write a sentence about rewards and models and tokens that is a little longer than the others",
    "0123456789 + - * / = ? ! . , : ;",
]


def make_tokenizer(vocab_size: int = 200):
    """A byte-level BPE tokenizer that adds BOS (``<s>``) in front of every sequence."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


# Tiny configs per architecture (hidden 32, 2 layers); the values are the smallest that keep each valid.
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256)
_GQA = dict(_DECODER, num_key_value_heads=2)
TINY_CONFIGS = {
    "llama": ("LlamaConfig", _GQA),
    "mistral": ("MistralConfig", _GQA),
    "qwen2": ("Qwen2Config", _GQA),
    "qwen3": ("Qwen3Config", dict(_GQA, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(_GQA, head_dim=8)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)),
    "gpt_neox": ("GPTNeoXConfig", _DECODER),
    "phi3": ("Phi3Config", _GQA),
}


def make_rm(out_dir: Path, arch: str = "llama", *, num_labels: int = 1, seed: int = 0, pad_token_id: int | None = 0,
            **overrides) -> Path:
    """Save a random tiny ``*ForSequenceClassification`` of ``arch`` with its tokenizer into ``out_dir``."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    config_class, sizes = TINY_CONFIGS[arch]
    config = dict(
        sizes,
        vocab_size=tok.get_vocab_size(),
        num_labels=num_labels,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    if num_labels > 1:
        config["id2label"] = {i: f"objective_{i}" for i in range(num_labels)}
        config["label2id"] = {v: k for k, v in config["id2label"].items()}
    config.update(overrides)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(getattr(transformers, config_class)(**config)).eval()
    # Random init leaves the head tiny (std 0.02): scale it so rewards are O(1) and differences visible.
    with torch.no_grad():
        model.score.weight.mul_(25.0)
    model.save_pretrained(out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    return out_dir


def make_llama_rm(out_dir: Path, **kwargs) -> Path:
    """A random tiny Llama reward model (see ``make_rm``)."""
    return make_rm(out_dir, "llama", **kwargs)


def add_head_bias(model_dir: Path, bias) -> None:
    """Add ``score.bias`` to a saved checkpoint, as models trained with a biased value head have (transformers'
    own head has no bias and drops it on load; the exporter keeps it)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = Path(model_dir) / "model.safetensors"
    tensors = load_file(str(path))
    tensors["score.bias"] = torch.tensor(bias, dtype=torch.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
