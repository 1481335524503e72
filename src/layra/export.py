"""Export a model layra wrote to GGUF, for llama.cpp, ollama and LM Studio.

layra export gguf runs/gl-layra --out gl.gguf --outtype q8_0

MODEL is what ``layra eval`` accepts (a model directory, a finished run — merged on the
fly — or ``MODEL+VEC:λ``). The file is written by llama.cpp's own converter (vendored,
run by :mod:`layra.gguf_convert` in its own process); layra only makes the Hugging Face
directory it reads: merged, with tied embeddings kept tied (one tensor in the file).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from layra.atomic import _umask, check_writable, clean_stale, temp_prefix
from layra.errors import LayraError, require
from layra.gguf_convert import OUTTYPES


@dataclass(frozen=True)
class Source:
    """Where the weights come from, resolved without loading them."""

    spec: object  # layra.evaluation.modelspec.ModelSpec
    hf_dir: Path | None  # an HF directory the converter can read as it is (checks, direct export)
    direct: bool  # convert hf_dir itself: nothing to merge
    tokenizer_from: Path | None  # the GGUF the base came from (its tokenizer is carried over)


@dataclass(frozen=True)
class ExportResult:
    out: Path
    outtype: str
    merged: bool  # weights were merged (run adapter / trained tensors / vectors) first
    tokenizer: str  # "converted" or "from FILE.gguf"
    bytes: int
    seconds: float


def find_source(model: str, tokenizer_from: str | None = None) -> Source:
    """Parse MODEL and find its HF directory (and base GGUF, if any); raise LayraError."""
    from layra.evaluation.modelspec import _resolve_base, is_run_dir, parse_model_spec
    from layra.models import resolve_source as resolve_model
    from layra.rundir import RunDir

    spec = parse_model_spec(model)
    for v in spec.vectors:
        require(Path(v.path).expanduser().exists(), f"vector {v.path} does not exist")
    if is_run_dir(spec.model):
        rd = RunDir(spec.model)
        has_model = (rd.model / "config.json").is_file()  # trained with merge=true
        if has_model:
            src, gguf = str(rd.model), None
        else:
            require(
                bool(rd.outputs()),
                f"run {rd.path} has neither model/, adapter/ nor trained.safetensors",
            )
            meta = rd.read_record()
            src, gguf = resolve_model(_resolve_base(meta.base_model, rd.path), meta.gguf_file)
        direct = has_model and not spec.vectors
    else:
        src, gguf = resolve_model(spec.model)
        direct = not spec.vectors
    require(Path(src).is_dir(), f"model {src} is not a local directory (export needs its files)")
    orig = Path(tokenizer_from).expanduser() if tokenizer_from else None
    if orig is None and gguf:
        orig = Path(src) / gguf  # a GGUF base: its tokenizer, exactly
    if orig is not None:
        require(
            orig.is_file() and orig.suffix == ".gguf", f"--tokenizer-from {orig}: not a .gguf file"
        )
    return Source(spec, None if gguf else Path(src), direct and not gguf, orig)


def _converter(hf_dir: Path, out: Path, outtype: str, src: Source, *flags: str) -> None:
    """Run llama.cpp's converter in its own process; its refusal becomes a LayraError."""
    root = Path(__file__).resolve().parents[1]  # so that the child imports this layra
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    )
    with tempfile.TemporaryDirectory(prefix="layra-gguf-") as tmp:
        err = Path(tmp) / "error"
        cmd = [sys.executable, "-m", "layra.gguf_convert", str(hf_dir), str(out)]
        cmd += ["--outtype", outtype, "--name", src.spec.default_name(), "--error-file", str(err)]
        if src.tokenizer_from:
            cmd += ["--tokenizer-from", str(src.tokenizer_from)]
        proc = subprocess.run([*cmd, *flags], env=env, stdout=subprocess.DEVNULL)
        if proc.returncode != 0:
            why = err.read_text(encoding="utf-8").strip() if err.is_file() else ""
            raise LayraError(
                why or f"llama.cpp's converter failed (exit {proc.returncode}; see above)"
            )


def tie_as_configured(hf) -> None:
    """Keep a tied embedding/LM head one tensor after merging; refuse if they diverged.

    PEFT's ``merge_and_unload`` can leave two equal copies; two *different* matrices under
    ``tie_word_embeddings`` would silently lose the head on save, so that is an error.
    """
    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    emb, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    if not getattr(cfg, "tie_word_embeddings", False) or emb.weight is head.weight:
        return
    require(
        torch.equal(emb.weight, head.weight),
        "the merged model's embedding and LM head differ although its config ties them; "
        "export would lose the trained head (was the run trained with untied modules_to_save?)",
    )
    head.weight = emb.weight


def write_merged(src: Source, target: Path, outtype: str) -> None:
    """The model MODEL names, merged into plain weights, as an HF directory ``target``."""
    from peft import PeftModel

    from layra.arch import unwrap
    from layra.evaluation.modelspec import load_spec

    # f32 export: f32 weights; else the stored dtype (bf16 stays bf16, fp32 stays fp32).
    loaded = load_spec(src.spec, dtype="float32" if outtype == "f32" else "bf16")
    model = loaded.model
    hf = model.merge_and_unload() if isinstance(model, PeftModel) else unwrap(model)
    tie_as_configured(hf)
    hf.save_pretrained(target)
    loaded.tok.save_pretrained(target)


def export_gguf(
    model: str,
    out: str | Path,
    outtype: str = "f16",
    tokenizer_from: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Write MODEL as one GGUF file ``out`` (atomic: complete or absent).

    Every refusal (bad MODEL, output, outtype, architecture, a tokenizer llama.cpp would
    not accept) is a one-line :class:`LayraError` raised before ``out`` is written.
    """
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    require(outtype in OUTTYPES, f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    require(out.suffix == ".gguf", f"--out {out}: the file name must end in .gguf")
    require(
        overwrite or not out.exists(),
        f"output {out} already exists (pass --overwrite to replace it)",
    )
    require(not out.is_dir(), f"output {out} is a directory; name a .gguf file")
    check_writable(out)
    src = find_source(model, tokenizer_from)
    if src.hf_dir is not None and not src.direct:
        # Architecture and tokenizer, before a merge that may take minutes. (A direct
        # conversion checks them itself before it writes the first byte.)
        _converter(src.hf_dir, out, outtype, src, "--check")
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in (out.name, out.name + ".hf"):
        clean_stale(out.parent, name)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(out.name), dir=out.parent)
    os.close(fd)
    tmp, merged_dir = Path(tmp_name), None
    try:
        hf_dir = src.hf_dir
        if not src.direct:
            merged_dir = Path(
                tempfile.mkdtemp(prefix=temp_prefix(out.name + ".hf"), dir=out.parent)
            )
            if progress:
                print(f"layra: merging {model} for export", file=sys.stderr, flush=True)
            write_merged(src, merged_dir, outtype)
            hf_dir = merged_dir
        _converter(hf_dir, tmp, outtype, src, *(["--progress"] if progress else []))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; outputs get the usual mode
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        if merged_dir is not None:
            shutil.rmtree(merged_dir, ignore_errors=True)
    how = f"from {src.tokenizer_from}" if src.tokenizer_from else "converted"
    return ExportResult(
        out, outtype, not src.direct, how, out.stat().st_size, time.perf_counter() - t0
    )
