"""Tiny random models and a tokenizer trained on the spot: every test's fixtures.

Nothing is downloaded. A model is a few layers, hidden 32, vocab ~300 — seconds
to build, train and save.
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT = {
    "en": "The quick brown fox jumps over the lazy dog. Open the file menu and choose save. "
    "Every person has the right to education and to freedom of thought.",
    "gl": "O raposo marrón rápido salta sobre o can preguiceiro. Abra o menú ficheiro e escolla "
    "gardar. Toda persoa ten dereito á educación e á liberdade de pensamento.",
    "es": "El rápido zorro marrón salta sobre el perro perezoso. Abra el menú archivo y elija "
    "guardar. Toda persona tiene derecho a la educación y a la libertad de pensamiento.",
    "pt": "A rápida raposa marrom salta sobre o cão preguiçoso. Abra o menu arquivo e escolha "
    "salvar. Toda pessoa tem direito à educação e à liberdade de pensamento.",
}

ARCHS = ("llama", "qwen2", "mistral", "gemma3_text")
# The linear sublayers of one decoder block, as the paper's LoRA targets them.
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on ``TEXT`` (any UTF-8 text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(list(TEXT.values()) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def make_model(
    arch: str = "llama",
    vocab_size: int = 300,
    layers: int = 4,
    tied: bool | None = None,
    seed: int = 0,
    **overrides,
):
    """A tiny random causal LM of the given architecture (hidden 32); ``overrides`` go
    into its config (e.g. ``query_pre_attn_scalar`` for a Gemma 3 that llama.cpp can run)."""
    from transformers import (
        AutoModelForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cls = {
        "llama": LlamaConfig,
        "qwen2": Qwen2Config,
        "mistral": MistralConfig,
        "gemma3_text": Gemma3TextConfig,
    }[arch]
    if arch == "gemma3_text":
        common.update(head_dim=8, sliding_window=64)
    common.update(overrides)
    default_tied = arch in ("qwen2", "gemma3_text")
    cfg = cls(tie_word_embeddings=default_tied if tied is None else tied, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    # Random init leaves B-like tensors and norms trivial; jitter norms so that
    # tests comparing layers see real differences.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_model(
    path: Path, arch: str = "llama", tied: bool | None = None, layers: int = 4, **overrides
) -> Path:
    tok = make_tokenizer()
    model = make_model(arch, vocab_size=len(tok), layers=layers, tied=tied, **overrides)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_corpus(path: Path, lang: str = "gl", docs: int = 40) -> Path:
    """A text file of ``docs`` paragraphs (blank-line separated) in one language."""
    words = TEXT[lang].split()
    paras = []
    for i in range(docs):
        k = 5 + (i * 7) % 17
        paras.append(" ".join(words[(i + j) % len(words)] for j in range(k)) + f" {i}.")
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return path


def run_cfg(model_dir, corpus, out, method="layra", extra=()):
    """A tiny-model run config on Galician text; ``extra`` overrides come last and win."""
    from layra.config import load_config

    km = ["method.k=1", "method.m=1"] if method in ("layer-selective", "layra") else []
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"data.sources=[{{path: {corpus}, lang: glg}}]",
            "data.seq_len=32",
            "data.heldout_fraction=0.1",
            "train.batch_size=2",
            "train.precision=fp32",
            f"method.name={method}",
            f"output_dir={out}",
            *km,
            *extra,
        ],
    )


def run_blocks(run_dir: Path) -> torch.Tensor:
    """The training blocks a run trained on (through the prepared data its data.json names)."""
    import json

    from layra.prepare import open_prepared

    rec = json.loads((Path(run_dir) / "data.json").read_text())
    return open_prepared(Path(rec["prepared"]), verify=False).blocks[:]
