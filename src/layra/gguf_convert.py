"""Run llama.cpp's own Hugging Face → GGUF converter on a model directory.

python -m layra.gguf_convert MODEL_DIR OUT.gguf --outtype f16 [--tokenizer-from ORIG.gguf]

The converter (``layra/_vendor/llamacpp_convert``, unchanged upstream code) runs in a process
of its own because it imports its own newer ``gguf`` package under the same name as PyPI's
``gguf``, which transformers uses to read GGUF files. :mod:`layra.export` starts this module;
a refusal is written, as one line, to the file named by ``--error-file`` (exit 2).

What layra adds around the converter, and only this:
- architectures outside :data:`ARCHITECTURES` are refused before the converter runs;
- a byte-level BPE tokenizer whose pre-tokenizer llama.cpp does not know *by hash* (a
  tokenizer trained for a test, a vocabulary extended for a new language) is accepted when
  its ``tokenizer.json`` spells out exactly one of the pre-tokenizers llama.cpp implements
  (:func:`known_pretokenizer`), and refused with the reason otherwise;
- ``--tokenizer-from`` copies every ``tokenizer.*`` key of the GGUF the model came from
  (Gemma 3 270M in the demo), so its tokenizer is carried over exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / "_vendor" / "llamacpp_convert"

# HF architecture -> converter module. Each is checked against llama.cpp's logits in
# tests/test_export_llamacpp.py; the converter knows many more, layra does not vouch for them.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen",
    "Gemma3ForCausalLM": "gemma",
}
OUTTYPES = ("f32", "f16", "bf16", "q8_0")

# tokenizer.json Split regexes, as Meta's and Qwen's tokenizers write them, and the
# llama.cpp pre-tokenizer that implements each (src/llama-vocab.cpp, LLAMA3 and QWEN2).
_SPLIT_PRETOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


class Refusal(Exception):
    """Input llama.cpp (or this converter) would not accept; the message is one line."""


def known_pretokenizer(tj: dict) -> str | None:
    """llama.cpp's name for the pre-tokenizer a ``tokenizer.json`` describes, or None.

    Only byte-level BPE: GPT-2's ByteLevel regex alone (``gpt-2``), or a Split on Llama 3's /
    Qwen2's regex followed by ByteLevel without its own regex; no normalizer, except NFC with
    Qwen2's regex: that is Qwen2's own tokenizer.json, which llama.cpp's hash list maps to
    ``qwen2`` all the same.
    """
    if (tj.get("model") or {}).get("type") != "BPE":
        return None
    name = _pretokenizer(tj.get("pre_tokenizer") or {})
    norm = (tj.get("normalizer") or {}).get("type")
    return name if norm is None or (norm == "NFC" and name == "qwen2") else None


def _pretokenizer(pre: dict) -> str | None:
    if pre.get("type") == "ByteLevel":
        plain = pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
        return "gpt-2" if plain else None
    parts = pre.get("pretokenizers") or []
    if pre.get("type") != "Sequence" or len(parts) != 2:
        return None
    split, byte_level = parts
    if (
        split.get("type") != "Split"
        or split.get("behavior") != "Isolated"
        or split.get("invert", False)
        or byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex", True)
        or byte_level.get("add_prefix_space", False)
    ):
        return None
    return _SPLIT_PRETOKENIZERS.get((split.get("pattern") or {}).get("Regex"))


def _pretokenizer_fallback(model, original):
    """Wrap the converter's hash lookup: on an unknown hash, recognise the pre-tokenizer by
    its description in tokenizer.json, or refuse naming the reason."""

    def get_vocab_base_pre(tokenizer) -> str:
        try:
            return original(tokenizer)
        except NotImplementedError:
            # The pipeline as transformers loaded it, which can differ from the file:
            # transformers 5 rebuilds a Qwen2 model's tokenizer with Qwen2's regex and NFC.
            backend = getattr(tokenizer, "backend_tokenizer", None)
            path = Path(model.dir_model) / "tokenizer.json"
            if backend is not None:
                tj = json.loads(backend.to_str())
            else:
                tj = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            name = known_pretokenizer(tj)
            if name is None:
                raise Refusal(
                    f"{model.dir_model}: llama.cpp does not recognise this tokenizer's BPE "
                    "pre-tokenizer (neither by llama.cpp's hash list nor as GPT-2/Llama 3/Qwen2 "
                    "byte-level BPE); if the model came from a GGUF, pass --tokenizer-from FILE.gguf"
                ) from None
            logging.getLogger("layra").info(
                "pre-tokenizer recognised from tokenizer.json: %s", name
            )
            return name

    return get_vocab_base_pre


def _copy_tokenizer(writer, source: Path, n_vocab: int) -> None:
    """Every ``tokenizer.*`` key of ``source`` into ``writer``, values and types as they are."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in fields:
        raise Refusal(f"{source}: has no tokenizer (no tokenizer.ggml.tokens)")
    n = len(fields["tokenizer.ggml.tokens"].data)
    if n != n_vocab:
        raise Refusal(f"{source}: its tokenizer has {n} tokens, the model's vocabulary {n_vocab}")
    for name, f in fields.items():
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), f.types[0], sub_type=sub)


def _model(args):
    """The converter's model object for ``args.model`` (nothing is read but config/tokenizer)."""
    import gguf
    from conversion import ModelBase, get_model_class

    hparams = ModelBase.load_hparams(Path(args.model), False)
    archs = hparams.get("architectures") or ["?"]
    arch = archs[0]
    if arch not in ARCHITECTURES:
        raise Refusal(
            f"{args.model}: architecture {arch} is not one layra exports to GGUF "
            f"({', '.join(ARCHITECTURES)})"
        )
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[args.outtype]
    cls = get_model_class(arch)
    model = cls(Path(args.model), ftype, Path(args.out), model_name=args.name)
    model.get_vocab_base_pre = _pretokenizer_fallback(model, model.get_vocab_base_pre)
    if args.tokenizer_from:
        source, n_vocab = Path(args.tokenizer_from), int(hparams["vocab_size"])
        model.set_vocab = lambda: _copy_tokenizer(model.gguf_writer, source, n_vocab)
    return model


def convert(args) -> None:
    """Convert (or with ``--check`` only validate config and tokenizer, writing nothing)."""
    import torch

    with torch.inference_mode():
        model = _model(args)
        if args.check:
            model.set_vocab()  # the tokenizer checks, into the in-memory writer only
            return
        model.prepare_tensors()
        model.prepare_metadata(vocab_only=False)  # the tokenizer, checked before any write
        w = model.gguf_writer
        w.write_header_to_file(path=model.fname_out)
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=args.progress)
        w.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m layra.gguf_convert", description=__doc__)
    p.add_argument("model", help="Hugging Face model directory")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16")
    p.add_argument("--tokenizer-from", help="GGUF whose tokenizer.* keys to carry over")
    p.add_argument("--name", help="general.name in the file (default: the directory's name)")
    p.add_argument("--check", action="store_true", help="validate only; write nothing")
    p.add_argument("--progress", action="store_true", help="a progress bar while writing")
    p.add_argument("--error-file", help="where a refusal's one-line reason goes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if "gguf" in sys.modules and not Path(sys.modules["gguf"].__file__).is_relative_to(VENDOR):
        raise RuntimeError("PyPI's gguf is already imported; run this module in its own process")
    sys.path.insert(0, str(VENDOR))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        convert(args)
    except (Refusal, NotImplementedError, ValueError, KeyError, AssertionError) as e:
        # NotImplementedError etc. are the converter's own refusals (an unknown tensor,
        # a missing hparam): the first line says which.
        lines = str(e).strip().splitlines()
        msg = lines[0] if lines else type(e).__name__
        if not isinstance(e, Refusal):
            msg = f"llama.cpp's converter refused {args.model}: {type(e).__name__}: {msg}"
        if args.error_file:  # the caller prints it
            Path(args.error_file).write_text(msg + "\n", encoding="utf-8")
        else:
            print(f"layra: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
