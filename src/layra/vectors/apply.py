"""Apply ``θ + Σ λ_i Δ_i``: streamed onto a model directory, or in place on a loaded model.

    layra vector apply base-model vectors/gl:1.0 --out models/gl          # Eq. 1
    layra vector apply models/gl vectors/sw-from-gl:0.5 --out models/gl-sw  # series, Eq. 2
    layra vector apply base-model vectors/gl:0.5 vectors/sw:0.5 --out m   # merge, Eq. 3
    layra vector apply instruct-model vectors/gl:0.5 --instruct --out m   # Eq. 4

On a safetensors directory nothing is loaded whole: shards no vector touches
are copied file-to-file in the kernel, untouched tensors inside touched shards
as raw bytes, and touched tensors are rewritten a block of rows at a time
(float32 arithmetic, stored dtype kept). Peak memory is a few blocks plus the
low-rank factors, whatever the model size.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from layra.arch import unwrap
from layra.atomic import atomic_dir, atomic_write_json
from layra.errors import LayraError
from layra.fingerprint import sample_positions
from layra.lock import holds_output_lock
from layra.provenance import provenance
from layra.vectors.arithmetic import (
    APPLY_CHUNK_BYTES,
    FP32,
    add_lowrank_,
    concat_lowrank,
    row_blocks,
    zero_rows,
)
from layra.vectors.compat import Contribution, Target, check_start, plan
from layra.vectors.format import Vector, VectorSpec, load_weighted
from layra.vectors.protect import DEFAULT, as_index, default_spec, resolve_rows
from layra.vectors.shards import StreamWriter, TensorInfo, copy_file, read_rows
from layra.vectors.source import INDEX, LiveModel, ModelDir, open_model

RECORD = "layra_vector_apply.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def applied_blocks(
    rows: int,
    row_elems: int,
    read: Callable[[int, int], torch.Tensor],
    terms: Sequence[Contribution],
    protect: torch.Tensor | None,
    chunk_bytes: int = APPLY_CHUNK_BYTES,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, new rows)`` of one weight with every term added, block by block.

    ``read(start, stop)`` gives the weight's current rows; ``protect`` holds
    rows whose delta is zeroed (only pass it for embedding / head weights).
    """
    factors = {id(e): vec.factors(e) for vec, e, _ in terms if e.kind == "lowrank"}
    fused, rest = None, list(terms)
    if protect is None and row_elems and rows:
        lowrank = [(vec, e, lam) for vec, e, lam in terms if e.kind == "lowrank"]
        if lowrank:
            # All low-rank terms as one product of concatenated factors (exact): one
            # pass over the block however many vectors there are.
            fused = concat_lowrank([(lam * e.scale, *factors[id(e)]) for _, e, lam in lowrank])
            rest = [t for t in terms if t[1].kind != "lowrank"]
    for start, stop in row_blocks(max(rows, 1), row_elems, chunk_bytes):  # 0-d: one block
        base = read(start, stop)
        acc = base.to(FP32, copy=True)
        if fused is not None:
            add_lowrank_(acc, *fused, 1.0, start)  # fused multiply-add, no B@A on its own
        for vec, e, lam in rest:
            d = vec.delta_rows(e, start, stop, *factors.get(id(e), (None, None)), check=False)
            acc.add_(zero_rows(d, protect, start, f"vector {vec.label}: {e.name}"), alpha=lam)
        if rest and not bool(torch.isfinite(acc.sum())):
            # One check of the result instead of one per delta; find the culprit only now.
            # (Low-rank factors were checked when read; their product cannot be NaN.)
            for vec, e, _ in rest:
                if e.kind != "lowrank":
                    vec.delta_rows(e, start, stop)  # raises for NaN/inf in the vector
        yield start, stop, acc.to(base.dtype)


def _record(
    weighted, matches, target: Target, instruct: bool, rows: list[int], **extra
) -> dict[str, Any]:
    return provenance(
        model=target.ref,
        model_fingerprint=target.fingerprint,
        vectors=[
            {
                "path": v.label,
                "lambda": lam,
                "start": v.start,
                "method": v.manifest.get("method"),
                "languages": v.manifest.get("languages"),
                "match": m,
            }
            for (v, lam), m in zip(weighted, matches, strict=True)
        ],
        instruct=instruct,
        forced=any(m == "forced" for m in matches),
        protected_rows=rows,
        **extra,
    )


def _jsonable(spec: Any) -> Any:
    return spec if spec is None or isinstance(spec, str) else [int(x) for x in spec]


# --- in memory -------------------------------------------------------------------------


class Applied:
    """Vectors added in place to a loaded model; :meth:`remove` restores the exact weights.

    The original values of the touched weights are kept (only those: for a
    LayRA vector, embedding, head and a few layers), so a λ sweep can apply and
    remove repeatedly without reloading the model and without drift.
    """

    def __init__(self, model: torch.nn.Module, backup: dict[str, torch.Tensor], record: dict):
        self.model = model
        self.record = record
        self._backup = backup

    def remove(self) -> None:
        params = dict(unwrap(self.model).named_parameters())
        with torch.no_grad():
            for name, orig in self._backup.items():
                params[name].copy_(orig)
        self._backup = {}

    def __enter__(self) -> Applied:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_to_model(
    model: torch.nn.Module,
    vectors: Sequence[VectorSpec],
    tokenizer: Any = None,
    protect_rows: str | Sequence[int] | None = DEFAULT,
    instruct: bool = False,
    force: bool = False,
) -> Applied:
    """Add ``Σ λ_i Δ_i`` to a loaded model in place; returns a handle that removes it.

    Same checks as :func:`apply_to_dir` (pass the tokenizer: the start-model
    fingerprint covers its vocabulary). Tied embedding/head are updated once.
    ``protect_rows`` (:mod:`layra.vectors.protect`): by default nothing for Eq. 1–3,
    special and chat-template rows for ``instruct``.
    """
    weighted = load_weighted(vectors)
    src = LiveModel(model, tokenizer)
    arch = src.arch
    vocab = (f"{arch.embed_name}.weight", f"{arch.head_name}.weight")
    target = Target("the model", src.shapes, src.dtypes, src.fingerprint(), vocab, arch.tied)
    terms = plan(weighted, target)  # first: its refusals (shape, vocabulary) are the specific ones
    matches = [check_start(v, target, instruct, force) for v, _ in weighted]
    vocab = target.shapes[target.vocab_names[0]][0]
    spec = default_spec(protect_rows, instruct)
    rows = resolve_rows(spec, vocab, tokenizer, src.config)
    protect = as_index(rows)
    backup: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, ts in terms.items():
            p = src.params[name]
            backup[name] = p.detach().clone()
            prot = protect if name in target.vocab_names else None
            row_elems = p[0].numel() if p.dim() else 1
            read = lambda a, b, n=name: src.read(n, a, b)  # noqa: E731
            for start, stop, new in applied_blocks(
                p.shape[0] if p.dim() else 0, row_elems, read, ts, prot
            ):
                if p.dim():
                    p[start:stop].copy_(new)
                else:
                    p.copy_(new)
    record = _record(weighted, matches, target, instruct, rows, protect_rows=_jsonable(spec))
    return Applied(model, backup, record)


# --- on disk ---------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``"2GB"``, ``"500MB"``, ``"200M"``, ``"1073741824"`` → bytes (powers of 1000, like HF)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", str(text).upper())
    if not m:
        raise LayraError(f"cannot read size {text!r} (e.g. 2GB, 500MB)")
    power = "_KMGT".index(m.group(2) or "_")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base**power)


def _layout(src: ModelDir, max_shard: int | None) -> list[tuple[str, list[TensorInfo]]]:
    """Output shards as ``(file name, tensors)``: the input's, or re-packed to ``max_shard``."""
    by_file: dict[str, list[TensorInfo]] = {}
    for t in src.tensors.values():
        by_file.setdefault(t.path.name, []).append(t)
    if max_shard is None:
        return [(p.name, by_file.get(p.name, [])) for p in src.shards]
    groups: list[list[TensorInfo]] = [[]]
    size = 0
    for shard in src.shards:
        for t in by_file.get(shard.name, []):
            if groups[-1] and size + t.nbytes > max_shard:
                groups.append([])
                size = 0
            groups[-1].append(t)
            size += t.nbytes
    if len(groups) == 1:
        return [("model.safetensors", groups[0])]
    n = len(groups)
    return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def _copy_aux(src: Path, dst: Path, shard_names: set[str]) -> dict | None:
    """Copy config, tokenizer and other small files; return a previous apply record if any."""
    previous = None
    for p in src.iterdir():
        if p.name in shard_names or p.name == INDEX or p.name.startswith("."):
            continue
        if p.name == RECORD:
            previous = json.loads(p.read_text())
            continue
        if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(p, dst / p.name)
        elif p.is_dir():
            shutil.copytree(p, dst / p.name)
    return previous


@holds_output_lock("out")
def apply_to_dir(
    model: str | Path,
    vectors: Sequence[VectorSpec],
    out: str | Path,
    *,
    instruct: bool = False,
    force: bool = False,
    protect_rows: str | Sequence[int] | None = DEFAULT,
    max_shard_size: str | int | None = None,
    overwrite: bool = False,
    gguf_file: str | None = None,
) -> dict[str, Any]:
    """Write ``model + Σ λ_i Δ_i`` as a standard Hugging Face directory at ``out``; return its record.

    The record (also written to ``out/layra_vector_apply.json``) holds the
    vectors with their λ and fingerprints, how each start model matched,
    whether ``force`` was needed, the protected rows and the output's
    fingerprint (what a vector trained from the output will name as its start).
    Raises :class:`LayraError` — leaving ``out`` untouched — for any refusal.
    """
    out = Path(out)
    weighted = load_weighted(vectors)
    if out.exists() and not overwrite:
        raise LayraError(f"output {out} already exists (pass --overwrite to replace it)")
    if Path(model).exists() and out.resolve() == Path(model).resolve():
        raise LayraError("the output directory must differ from the model directory")
    src = open_model(str(model), gguf_file)
    if isinstance(src, LiveModel):
        return _apply_live(
            src, weighted, out, instruct, force, protect_rows, max_shard_size, overwrite
        )
    samples = src.samples()
    fp, fast = _start_fingerprint(src, weighted, samples)
    target = Target(src.ref, src.shapes, src.dtypes, fp, _vocab_names(weighted), src.tied)
    terms = plan(weighted, target)  # first: its refusals (shape, vocabulary) are the specific ones
    matches = [check_start(v, target, instruct, force) for v, _ in weighted]
    vocab = target.shapes[target.vocab_names[0]][0]
    spec = default_spec(protect_rows, instruct)
    rows = _protected_rows(spec, vocab, src)
    protect = as_index(rows)
    max_shard = parse_size(max_shard_size) if isinstance(max_shard_size, str) else max_shard_size
    layout = _layout(src, max_shard)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        previous = _copy_aux(src.path, tmp, {p.name for p in src.shards})
        copy_untouched = max_shard is None
        weight_map = _write_shards(
            src, tmp, layout, terms, target, protect, samples, copy_untouched
        )
        if len(layout) > 1 or src.index is not None:
            _write_index(src, tmp, weight_map)
        record = _record(
            weighted, matches, target, instruct, rows, model_record=previous,
            protect_rows=_jsonable(spec),
        )  # fmt: skip
        # The output's fingerprint from the values just written: untouched tensors keep
        # their samples, touched ones were sampled block by block (no second read pass).
        record["output_fingerprint"] = src.fingerprint(samples, fast=fast)
        atomic_write_json(tmp / RECORD, record)
    return record


def _write_index(src: ModelDir, tmp: Path, weight_map: dict[str, str]) -> None:
    """The sharded checkpoint's index, with the new weight map (metadata kept)."""
    index = dict(src.index or {})
    total = sum(t.nbytes for t in src.tensors.values())
    index["metadata"] = {**index.get("metadata", {}), "total_size": total}
    index["weight_map"] = dict(sorted(weight_map.items()))
    atomic_write_json(tmp / INDEX, index)


def _start_fingerprint(src: ModelDir, weighted, samples) -> tuple[dict[str, str], bool]:
    """The model's fingerprint and whether the fast way gave it. Config and vocabulary are
    read as JSON (no transformers import); a fingerprint that does not match a vector is
    recomputed the slow way before anything is refused."""
    fp = src.fingerprint(samples, fast=True)
    if all(v.start.get("arch") == fp["arch"] for v, _ in weighted):
        return fp, True
    return src.fingerprint(samples), False


def _write_shards(
    src: ModelDir, tmp: Path, layout, terms, target: Target, protect, samples, copy_untouched: bool
) -> dict[str, str]:
    """Write each output shard, streaming every changed tensor a block of rows at a time;
    return the weight map. ``samples`` gets the fingerprint samples of the changed tensors."""
    weight_map: dict[str, str] = {}
    for fname, infos in layout:
        weight_map.update((t.name, fname) for t in infos)
        meta = src.metadata.get(fname) or {"format": "pt"}
        if copy_untouched and not any(t.name in terms for t in infos):
            copy_file(src.path / fname, tmp / fname)  # untouched shard: kernel copy
            continue
        planned = [(t.name, t.dtype, t.shape) for t in infos]
        with StreamWriter(tmp / fname, planned, meta) as w:
            for t in infos:
                if t.name not in terms:
                    w.add_raw(t.name, t)
                    continue
                w.begin(t.name, t.dtype, t.shape)
                prot = protect if t.name in target.vocab_names else None
                picked = _SamplePicker(t)
                for start, _, new in applied_blocks(
                    t.rows if t.shape else 0,
                    t.nbytes // t.dtype.itemsize // t.rows,
                    _rows_reader(t),
                    terms[t.name],
                    prot,
                ):
                    w.write(new)
                    picked.add(start, new)
                samples[t.name] = picked.bytes()
    return weight_map


def _protected_rows(spec, vocab: int, src: ModelDir) -> list[int]:
    """:func:`resolve_rows`, loading the tokenizer (a transformers import) only for "special"."""
    items = spec.split(",") if isinstance(spec, str) else [] if spec is None else list(spec)
    if any(isinstance(i, str) and i.strip() == "special" for i in items):
        return resolve_rows(spec, vocab, src.tokenizer, src.config)
    return resolve_rows(spec, vocab)


def _vocab_names(weighted: Sequence[tuple[Vector, float]]) -> tuple[str, str]:
    """Embedding / head names as the vectors recorded them (from ``layra.arch`` at extraction).

    Taken from the vectors rather than by building the target model on the meta
    device (seconds of imports): any vector that fits has the target's architecture.
    """
    names = {(v.manifest["embed"], v.manifest["head"]) for v, _ in weighted}
    if len(names) > 1:
        raise LayraError(f"the vectors disagree on the embedding / head names: {sorted(names)}")
    return names.pop()


class _SamplePicker:
    """Collects a tensor's fingerprint sample from its new values, block of rows by block."""

    def __init__(self, info: TensorInfo):
        self.row_elems = info.nbytes // info.dtype.itemsize // info.rows
        self.pos = sample_positions(max(1, math.prod(info.shape)))
        self.parts: list[torch.Tensor] = []

    def add(self, start: int, block: torch.Tensor) -> None:
        flat = block.reshape(-1)
        if self.pos is None:
            self.parts.append(flat)
            return
        lo = start * self.row_elems
        inside = self.pos[(self.pos >= lo) & (self.pos < lo + flat.numel())]
        self.parts.append(flat[inside - lo])

    def bytes(self) -> bytes:
        return torch.cat(self.parts).to(torch.float32).numpy().tobytes()


def _rows_reader(info: TensorInfo) -> Callable[[int, int], torch.Tensor]:
    return lambda start, stop: read_rows(info, start, stop) if info.shape else read_rows(info)


def _apply_live(
    src: LiveModel, weighted, out, instruct, force, protect_rows, max_shard_size, overwrite
):
    """A model that is not a safetensors directory (GGUF, hub id): apply in memory, save."""
    from layra.fingerprint import model_fingerprint

    handle = apply_to_model(src.model, weighted, src.tokenizer, protect_rows, instruct, force)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        src.model.save_pretrained(tmp, **kwargs)
        if src.tokenizer is not None:
            src.tokenizer.save_pretrained(tmp)
        record = dict(handle.record, model=src.ref)
        record["output_fingerprint"] = model_fingerprint(src.model, src.tokenizer)
        atomic_write_json(tmp / RECORD, record)
    return record
