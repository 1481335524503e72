"""How text is cut into documents: one rule for training, evaluation, corpora and held-out files.

    docs = split_documents(Path("gl.txt").read_text())    # a .txt file: blank-line separated
    docs = read_documents("runs/gl/heldout/glg.jsonl")     # .txt, or .jsonl rows {"text": ...}
    text = documents_jsonl(docs)                           # exact: read_documents gives docs back

A **blank line** is a line (``\\n``-terminated; ``\\r\\n`` counts as ``\\n``) whose
characters are all whitespace, or none. A ``.txt`` file's documents are the blocks
between runs of blank lines, each stripped of surrounding whitespace; empty ones are
dropped. So a ``.txt`` document never contains a blank line — a document that does
(a JSONL row, a web page) is kept whole only in JSONL, which is why a run's held-out
documents are saved as ``heldout/LANG.jsonl``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from layra.errors import LayraError

# A newline, then a line of whitespace other than newlines, then its newline.
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
JSONL_FIELD = "text"


def split_documents(text: str) -> list[str]:
    """The documents of ``.txt`` text: blank-line separated blocks, stripped, empty ones dropped."""
    text = text.replace("\r\n", "\n")
    return [d.strip() for d in _BLANK_LINE.split(text) if d.strip()]


def documents_jsonl(docs: list[str]) -> str:
    """``docs`` as JSONL, one ``{"text": doc}`` per line; :func:`read_documents` gives them back."""
    return "".join(json.dumps({JSONL_FIELD: d}, ensure_ascii=False) + "\n" for d in docs)


def _jsonl_documents(text: str, path: Path) -> list[str]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LayraError(f"{path}:{n}: not a JSON line ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get(JSONL_FIELD), str):
            raise LayraError(f'{path}:{n}: expected {{"{JSONL_FIELD}": "..."}}')
        if row[JSONL_FIELD].strip():
            docs.append(row[JSONL_FIELD].strip())
    return docs


def read_documents(path: str | Path) -> list[str]:
    """The documents of a ``.jsonl`` file (one per row's ``text``) or of any other text file.

    Documents are stripped and empty ones dropped in both formats. Raises
    :class:`LayraError` for an unreadable, non-UTF-8 or malformed file.
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise LayraError(f"{p} is not UTF-8 ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise LayraError(f"cannot read {p}: {e.strerror}") from e
    return _jsonl_documents(text, p) if p.suffix == ".jsonl" else split_documents(text)
