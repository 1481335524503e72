"""A corpus from a Hugging Face dataset, streamed: FineWeb 2 online, local files offline.

    layra corpus hf HuggingFaceFW/fineweb-2 --config glg_Latn --lang glg --max-docs 20000 --out fw/
    layra corpus hf json --data-files gl.jsonl --lang glg --out fw/    # same code, local data

Rows are read with ``datasets.load_dataset(..., streaming=True)`` so only the
first ``max_docs`` rows are fetched; row ``n`` is document ``n``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from layra.corpus.files import finish_one_source, read_documents
from layra.corpus.langs import check_lang_code
from layra.corpus.output import reuse_existing
from layra.corpus.split import check_fraction
from layra.errors import LayraError
from layra.lock import holds_output_lock


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _as_layra_error(dataset: str, e: Exception) -> Exception:
    if isinstance(e, LayraError):
        return e
    if isinstance(e, ConnectionError):
        return LayraError(
            f"cannot reach dataset {dataset} on the Hugging Face Hub ({_first_line(e)}); "
            "offline, use local files: `layra corpus hf json --data-files FILE` or `layra corpus files`"
        )
    if isinstance(e, (FileNotFoundError, ValueError, OSError)) or type(e).__module__.startswith(
        ("datasets", "pyarrow", "huggingface_hub")  # their own wrappers of parse / hub errors
    ):
        return LayraError(f"cannot read dataset {dataset}: {_first_line(e)}")
    return e


def stream_texts(
    dataset: str,
    config: str | None = None,
    field: str = "text",
    split: str = "train",
    data_files: list[str] | None = None,
    max_docs: int | None = None,
) -> Iterator[str]:
    """The ``field`` of each row of a streamed dataset, at most ``max_docs`` rows.

    The dataset is opened before this returns, so an unreachable or unknown
    dataset fails here; that, unreadable rows and a missing field raise
    :class:`LayraError` in one line.
    """
    import datasets

    for f in data_files or []:
        if not Path(f).expanduser().exists():
            raise LayraError(f"data file {f} not found")
    try:
        ds = datasets.load_dataset(
            dataset, name=config, split=split, streaming=True, data_files=data_files
        )
    except Exception as e:
        raise _as_layra_error(dataset, e) from e

    def rows() -> Iterator[str]:
        try:
            for row in islice(ds, max_docs):
                if field not in row:
                    fields = ", ".join(row)
                    raise LayraError(f"dataset {dataset} has no field {field!r}; fields: {fields}")
                if isinstance(row[field], str):
                    yield row[field]
        except Exception as e:
            raise _as_layra_error(dataset, e) from e

    return rows()


@holds_output_lock("out")
def build_hf_corpus(
    dataset: str,
    out: Path | str,
    lang: str,
    config: str | None = None,
    field: str = "text",
    split: str = "train",
    data_files: list[str] | None = None,
    max_docs: int | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    min_words: int = 0,
    source: str = "hf",
    overwrite: bool = False,
) -> Path:
    """Stream up to ``max_docs`` rows and write them as ``out/<source>/<lang>/...``.

    Same split, deduplication and manifest as :func:`build_files_corpus`.
    Returns ``out``.
    """
    lang = check_lang_code(lang)
    check_fraction(heldout_fraction)
    if max_docs is not None and max_docs < 2:
        raise LayraError(
            f"--max-docs must be at least 2 to split train and held-out, got {max_docs}"
        )
    out = Path(out).expanduser()
    request = {
        "kind": "hf",
        "source": source,
        "dataset": dataset,
        "config": config,
        "split": split,
        "data_files": data_files,
        "field": field,
        "max_docs": max_docs,
        "lang": lang,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "min_words": min_words,
    }
    if reuse_existing(out, request, overwrite):
        print(f"corpus {out} already built from this dataset; reusing it (--overwrite rebuilds)")
        return out
    # Offline, a hub name takes ~30 s of retries before it fails: say what is happening.
    print(f"opening dataset {dataset} (streaming)", flush=True)
    texts = stream_texts(dataset, config, field, split, data_files, max_docs)
    docs = read_documents(tqdm(texts, desc=f"{dataset} rows", unit="doc", total=max_docs))
    if not docs:
        raise LayraError(f"dataset {dataset} gave no text in field {field!r}")
    return finish_one_source(
        out, source, {lang: docs}, request, min_words, heldout_fraction, seed, overwrite
    )
