"""Training text: read documents, hold some out, tokenize to a budget, pack into blocks.

    packed = build_dataset(cfg.data, tokenizer, seed=0)
    packed.blocks        # LongTensor [n_blocks, seq_len], shuffled, every language mixed
    packed.heldout       # {"glg": ["held-out document", ...]} — never in blocks

Documents: a ``.txt`` file is blank-line separated paragraphs; ``.jsonl`` and
``.parquet`` rows and hub datasets give one document per row (``field``). Local
files and hub datasets go through the same ``datasets`` streaming reader, so the
hub path is exercised by tests on local files.

Held-out rule: a document is held out when the first 8 bytes of
sha256(normal_key(text)), read as a fraction of 2**64, fall below
``heldout_fraction``. ``normal_key`` (:mod:`layra.neardup`) ignores case,
punctuation and spacing, so copies that differ only in those land on the same
side. It depends on the text alone, so it is the same in every run, order and
process. After reading, a held-out document whose word-3-gram Jaccard with a
document that was tokenized for training is at least 0.5 is dropped (neither
trained on nor held out; counted in the stats as ``heldout_near_duplicates``).

Budgets: each language's training documents are tokenized in a seeded random
order, so a token budget (and the cut of ``mix: equal`` / ``concat``) is a
random sample of whole documents, the same for the same seed. Local files are
read whole and shuffled exactly; a hub dataset is streamed through
``datasets``' seeded shuffle (its shards in random order, then a buffer of
``SHUFFLE_BUFFER`` documents), which only approximates a uniform sample.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layra.config import DataConfig, SourceConfig
from layra.documents import documents_jsonl, read_documents, split_documents
from layra.errors import LayraError
from layra.neardup import NGRAM, THRESHOLD, near_duplicates, normal_key

# Documents a streamed hub dataset's seeded shuffle draws from at a time (datasets'
# IterableDataset.shuffle buffer); it also shuffles the order of the dataset's shards.
SHUFFLE_BUFFER = 10_000

_SUFFIX_FORMAT = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


def source_format(src: SourceConfig) -> str:
    """The reader for a source: the configured one, or guessed from its path."""
    if src.format != "auto":
        return src.format
    p = Path(src.path).expanduser()
    if p.is_dir():
        kinds = {_SUFFIX_FORMAT.get(f.suffix) for f in p.iterdir() if f.is_file()} - {None}
        if len(kinds) != 1:
            raise LayraError(
                f"data source {p}: directory must hold .txt, .jsonl or .parquet files of one kind"
            )
        return kinds.pop()
    if p.exists():
        fmt = _SUFFIX_FORMAT.get(p.suffix)
        if fmt is None:
            raise LayraError(
                f"data source {p}: unknown file type {p.suffix!r}; use .txt, .jsonl or .parquet"
            )
        return fmt
    if src.path.count("/") == 1 and not src.path.startswith((".", "/", "~")):
        return "hf"
    raise LayraError(f"data file {src.path} not found")


def _files(src: SourceConfig, fmt: str) -> list[str]:
    p = Path(src.path).expanduser()
    suffixes = [s for s, f in _SUFFIX_FORMAT.items() if f == fmt]
    files = sorted(str(f) for f in p.iterdir() if f.suffix in suffixes) if p.is_dir() else [str(p)]
    if not files:
        raise LayraError(f"data source {p} has no {fmt} files")
    return files


def _read_txt(path: str) -> Iterator[str]:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LayraError(
            f"{path}: not valid UTF-8 (byte {e.start}); convert it to UTF-8 first"
        ) from e
    yield from split_documents(text)


def iter_documents(src: SourceConfig, shuffle_seed: int | None = None) -> Iterator[str]:
    """Every non-empty document of a source, in file order (streamed).

    With ``shuffle_seed``, a hub dataset comes in ``datasets``' seeded streaming
    shuffle order (shards shuffled, then a :data:`SHUFFLE_BUFFER` buffer); local
    files ignore it (:func:`tokenize_language` shuffles them whole).
    """
    fmt = source_format(src)
    if fmt == "txt":
        for f in _files(src, fmt):
            yield from _read_txt(f)
        return
    import datasets

    try:
        if fmt == "hf":
            ds = datasets.load_dataset(src.path, src.config, split=src.split, streaming=True)
            if shuffle_seed is not None:
                ds = ds.shuffle(seed=shuffle_seed, buffer_size=SHUFFLE_BUFFER)
        else:
            builder = "json" if fmt == "jsonl" else "parquet"
            ds = datasets.load_dataset(
                builder, data_files=_files(src, fmt), split="train", streaming=True
            )
        for row in ds:
            if src.field not in row:
                raise LayraError(
                    f"data source {src.path}: no field {src.field!r}; fields: {', '.join(row)}"
                )
            text = row[src.field]
            if isinstance(text, str) and text.strip():
                yield text.strip()
    except LayraError:
        raise
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()
        raise LayraError(
            f"cannot read data source {src.path}: {msg[0] if msg else type(e).__name__}"
        ) from e
    except Exception as e:  # datasets wraps JSON / Arrow errors in its own types
        if type(e).__module__.startswith(("datasets", "pyarrow")):
            msg = str(e).strip().splitlines()
            raise LayraError(
                f"cannot read data source {src.path}: {msg[0] if msg else type(e).__name__}"
            ) from e
        raise


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out slice (see the module docstring)."""
    if fraction <= 0:
        return False
    key = normal_key(text).encode("utf-8")
    h = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    return h / 2**64 < fraction


@dataclass
class LanguageStream:
    lang: str
    tokens: list[int] = field(default_factory=list)
    documents: int = 0
    heldout: list[str] = field(default_factory=list)
    heldout_near_duplicates: int = 0  # held-out documents dropped as near-duplicates of train


def _training_documents(
    sources: list[SourceConfig], heldout_fraction: float, heldout: list[str], seed: int
) -> Iterator[str]:
    """A language's training documents in a seeded random order; held-out ones go to ``heldout``.

    Local sources are read whole and shuffled together (an exact uniform order);
    hub sources follow, each in ``datasets``' seeded streaming shuffle order.
    """
    local: list[str] = []
    hub = [s for s in sources if source_format(s) == "hf"]
    for src in (s for s in sources if s not in hub):
        for doc in iter_documents(src):
            (heldout if is_heldout(doc, heldout_fraction) else local).append(doc)
    random.Random(seed).shuffle(local)
    yield from local
    for src in hub:
        for doc in iter_documents(src, shuffle_seed=seed):
            if is_heldout(doc, heldout_fraction):
                heldout.append(doc)
            else:
                yield doc


def tokenize_language(
    sources: list[SourceConfig],
    tokenizer,
    budget: int | None,
    heldout_fraction: float,
    heldout_max_docs: int,
    batch_docs: int = 256,
    seed: int = 0,
) -> LanguageStream:
    """Tokenize a seeded random sample of one language's documents, ``budget`` tokens.

    Documents are kept whole (but the last, cut at the budget) and taken in a
    random order fixed by ``seed`` (see the module docstring), so the budget is
    a sample of the whole text, not its first documents. Each document becomes
    the tokenizer's own encoding (with BOS where the model expects it) followed
    by EOS, so packed blocks have EOS between documents. A hub dataset is read
    only until the budget is met. Held-out documents that nearly duplicate a
    tokenized training document are dropped; the first ``heldout_max_docs`` of
    the rest, in source order, are kept.
    """
    out = LanguageStream(lang=sources[0].lang)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise LayraError("the tokenizer has no EOS token; packing needs one between documents")
    heldout: list[str] = []
    used: list[str] = []  # training documents tokenized, in order
    starts: list[int] = []  # where each begins in out.tokens
    pending: list[str] = []

    def flush() -> None:
        enc = tokenizer(pending, add_special_tokens=True)["input_ids"]
        for ids in enc:
            starts.append(len(out.tokens))
            out.tokens.extend(ids)
            out.tokens.append(eos)
        used.extend(pending)
        pending.clear()

    for doc in _training_documents(sources, heldout_fraction, heldout, seed):
        pending.append(doc)
        if len(pending) >= batch_docs:
            flush()
            if budget is not None and len(out.tokens) >= budget:
                break
    if pending:
        flush()
    if not used:
        names = ", ".join(s.path for s in sources)
        raise LayraError(f"no training documents for language {out.lang} in {names} (empty file?)")
    if budget is not None:
        del out.tokens[budget:]
        # The last batch may reach past the budget: only documents with tokens kept count.
        del used[sum(st < budget for st in starts) :]
    out.documents = len(used)
    near = near_duplicates(heldout, used) if heldout else {}
    out.heldout_near_duplicates = len(near)
    out.heldout = [d for i, d in enumerate(heldout) if i not in near][:heldout_max_docs]
    return out


@dataclass
class PackedData:
    blocks: torch.Tensor  # [n, seq_len] int64
    block_lang: list[str]  # language of each block (same order)
    heldout: dict[str, list[str]]
    stats: dict


def language_budgets(cfg: DataConfig) -> dict[str, int | None]:
    """Tokens each language may contribute while reading, in order of first appearance.

    None means "all of it"; equal mixing without a budget is cut to the smallest
    language after reading (:func:`build_dataset`), when the sizes are known.
    """
    langs = list(dict.fromkeys(s.lang for s in cfg.sources))
    total = cfg.max_tokens
    if cfg.mix == "concat" or total is None:
        return {lang: None for lang in langs}
    if cfg.mix == "equal":
        return {lang: total // len(langs) for lang in langs}
    weights = {lang: sum(s.weight or 0 for s in cfg.sources if s.lang == lang) for lang in langs}
    wsum = sum(weights.values())
    return {lang: int(total * w / wsum) for lang, w in weights.items()}


def _stats(cfg: DataConfig, streams, data: torch.Tensor, block_lang: list[str], seed: int):
    """``data_stats.json``: per language tokens, documents and blocks, and the rules used."""
    return {
        "languages": {
            lang: {
                "train_tokens": (len(s.tokens) // cfg.seq_len) * cfg.seq_len,
                "train_documents": s.documents,
                "heldout_documents": len(s.heldout),
                "heldout_near_duplicates": s.heldout_near_duplicates,
                "blocks": block_lang.count(lang),
            }
            for lang, s in streams.items()
        },
        "sample": {
            "seed": seed,
            "rule": "each language's training documents in a seeded random order (local files "
            f"shuffled whole; hub datasets by datasets' streaming shuffle, buffer "
            f"{SHUFFLE_BUFFER}); budgets and equal/concat cuts take the leading documents",
        },
        "heldout_rule": f"sha256 of the case/punctuation/space-normalised text < "
        f"{cfg.heldout_fraction}; held-out documents with word-{NGRAM}-gram Jaccard >= "
        f"{THRESHOLD} to a tokenized training document dropped",
        "blocks": len(data),
        "seq_len": cfg.seq_len,
        "tokens": int(data.numel()),
        "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest(),
    }


def build_dataset(cfg: DataConfig, tokenizer, seed: int = 0, progress: bool = False) -> PackedData:
    """Read, hold out, tokenize, budget, pack and shuffle every source (see module doc)."""
    langs = list(dict.fromkeys(s.lang for s in cfg.sources))
    budgets = language_budgets(cfg)
    streams: dict[str, LanguageStream] = {}
    for lang in langs:
        if progress:
            print(f"  reading and tokenizing {lang} ...", flush=True)
        srcs = [s for s in cfg.sources if s.lang == lang]
        streams[lang] = tokenize_language(
            srcs, tokenizer, budgets[lang], cfg.heldout_fraction, cfg.heldout_max_docs, seed=seed
        )
    if cfg.mix == "equal" and cfg.max_tokens is None and len(langs) > 1:
        smallest = min(len(s.tokens) for s in streams.values())
        for s in streams.values():
            del s.tokens[smallest:]
    if cfg.mix == "concat" and cfg.max_tokens is not None:
        remaining = cfg.max_tokens
        for s in streams.values():
            del s.tokens[max(remaining, 0) :]
            remaining -= len(s.tokens)
    blocks, block_lang = [], []
    for lang, s in streams.items():
        n = len(s.tokens) // cfg.seq_len
        if n:
            blocks.append(
                torch.tensor(s.tokens[: n * cfg.seq_len], dtype=torch.long).view(n, cfg.seq_len)
            )
            block_lang.extend([lang] * n)
    if not blocks:
        sizes = ", ".join(f"{k}: {len(s.tokens)}" for k, s in streams.items())
        raise LayraError(
            f"not enough text for one block of data.seq_len={cfg.seq_len} tokens ({sizes})"
        )
    data = torch.cat(blocks)
    if cfg.shuffle:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(data), generator=g)
        data = data[perm]
        block_lang = [block_lang[i] for i in perm.tolist()]
    stats = _stats(cfg, streams, data, block_lang, seed)
    return PackedData(data, block_lang, {k: s.heldout for k, s in streams.items()}, stats)


def save_packed(packed: PackedData, directory: Path) -> None:
    """Write held-out text, stats and blocks (safetensors) into a run directory.

    ``data.safetensors`` is renamed into place last: it is the completion marker
    (``train`` reuses packed data when it exists), so a kill at any earlier point
    leaves no marker and the next run packs again.
    """
    import os

    from safetensors.torch import save_file

    from layra.atomic import atomic_write_json, atomic_write_text, temp_prefix
    from layra.rundir import RunDir

    rd = RunDir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for lang, docs in packed.heldout.items():
        # JSONL: a document with blank lines inside (a JSONL row) stays one document.
        atomic_write_text(rd.heldout_file(lang), documents_jsonl(docs))
    atomic_write_json(rd.data_stats, packed.stats)
    tmp = directory / temp_prefix(rd.data.name).rstrip("-")
    save_file(
        {"blocks": packed.blocks.contiguous()},
        str(tmp),
        metadata={"block_lang": json.dumps(packed.block_lang)},
    )
    os.replace(tmp, rd.data)


def load_packed(directory: Path) -> PackedData:
    """Read what :func:`save_packed` wrote; a damaged file is a one-line error."""
    from safetensors import SafetensorError, safe_open

    from layra.rundir import RunDir

    rd = RunDir(directory)
    try:
        with safe_open(str(rd.data), framework="pt") as f:
            blocks = f.get_tensor("blocks")
            block_lang = json.loads(f.metadata()["block_lang"])
        heldout = {}
        # .txt: a run saved before held-out text was JSONL
        for p in sorted(rd.heldout.glob("*.*"), key=lambda p: p.suffix != ".jsonl"):
            if p.suffix in (".jsonl", ".txt"):
                heldout.setdefault(p.stem, read_documents(p))
        stats = json.loads(rd.data_stats.read_text())
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as e:
        raise LayraError(
            f"packed data in {directory} is damaged ({str(e).splitlines()[0] if str(e) else e!r}); "
            f"delete {rd.data} to pack it again"
        ) from e
    return PackedData(blocks, block_lang, heldout, stats)
