"""How text is cut into documents: one rule for training, evaluation, corpora and held-out files.

    docs = split_documents(Path("gl.txt").read_text())    # a .txt file: blank-line separated
    docs = read_documents("runs/gl/heldout/glg.jsonl")     # .txt, or .jsonl rows {"text": ...}
    text = documents_jsonl(docs)                           # exact: read_documents gives docs back
    for start, end in block_spans(raw_bytes): doc = span_document(raw_bytes[start:end])

A **blank line** is a line (``\\n``-terminated; ``\\r\\n`` counts as ``\\n``) whose
characters are all whitespace, or none. A ``.txt`` file's documents are the blocks
between runs of blank lines, each stripped of surrounding whitespace; empty ones are
dropped. So a ``.txt`` document never contains a blank line — a document that does
(a JSONL row, a web page) is kept whole only in JSONL, which is why a run's held-out
documents are saved as ``heldout/LANG.jsonl``.

The same rule works on raw UTF-8 bytes (:func:`block_spans`, :func:`blank_line_cut`), so a
``.txt`` file of any size is split in pieces without decoding it whole, and a document is
found again by its byte span (the prepared-data store, :mod:`layra.prepare`):
``[span_document(b) for b in blocks] == split_documents(text)`` with empty ones dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from layra.errors import LayraError

# A newline, then a line of whitespace other than newlines, then its newline.
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
JSONL_FIELD = "text"


def _blank_line_bytes() -> re.Pattern[bytes]:
    """``_BLANK_LINE`` on UTF-8 bytes: the same blank lines, byte for byte.

    ``[^\\S\\n]`` (whitespace other than a newline) is spelled out as the UTF-8 encodings of
    the characters it matches; all of them lie below U+3001 (a test checks every code point).
    """
    chars = [chr(c) for c in range(0x3001) if _NL_SPACE.fullmatch(chr(c))]
    single = b"".join(re.escape(c.encode()) for c in chars if len(c.encode()) == 1)
    multi = b"|".join(re.escape(c.encode()) for c in chars if len(c.encode()) > 1)
    return re.compile(rb"\n(?:[" + single + rb"]|" + multi + rb")*\n")


_NL_SPACE = re.compile(r"[^\S\n]")
_BLANK_LINE_BYTES = _blank_line_bytes()


def block_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte spans of the blocks between blank lines of UTF-8 ``data`` (empty ones included).

    ``span_document(data[s:e])`` for each span, empty results dropped, gives exactly
    ``split_documents(data.decode())``: a ``\\r`` before ``\\n`` is whitespace to the byte
    rule, as it is after ``split_documents`` folds ``\\r\\n``.
    """
    spans, pos = [], 0
    for m in _BLANK_LINE_BYTES.finditer(data):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(data)))
    return spans


def blank_line_cut(data: bytes, tail: int = 1 << 20) -> int:
    """A position just after a blank line of ``data`` (the last one found), or -1 if none.

    Cutting text there does not change its documents: the documents of ``data[:cut]``
    followed by those of the rest are the documents of the whole (a test checks it).
    Only the last ``tail`` bytes are searched first, so a cut costs little on big pieces.
    """
    for start in (max(0, len(data) - tail), 0):
        last = -1
        for m in _BLANK_LINE_BYTES.finditer(data, start):
            last = m.end()
        if last >= 0 or start == 0:
            return last
    return -1


def txt_pieces(
    path: str | Path, piece_bytes: int = 1 << 24, max_document_bytes: int = 1 << 28
) -> Iterator[tuple[int, bytes]]:
    """A text file as ``(offset, bytes)`` pieces of about ``piece_bytes``, each cut just
    after a blank line (so their documents are the file's), read in bounded memory.

    Raises :class:`LayraError` for a NUL byte (not a text file) and for more than
    ``max_document_bytes`` without a blank line (one document too large to tokenize).
    """
    with open(path, "rb") as f:
        buf, base = b"", 0
        while True:
            raw = f.read(piece_bytes)
            if b"\0" in raw:
                at = base + len(buf) + raw.index(b"\0")
                raise LayraError(f"{path}: NUL byte at byte {at}; not a text file")
            buf += raw
            cut = len(buf) if not raw else blank_line_cut(buf)
            if cut < 0:
                if len(buf) > max_document_bytes:
                    raise LayraError(
                        f"{path}: over {max_document_bytes >> 20} MiB without a blank line from "
                        f"byte {base}; documents are blank-line separated (split the text)"
                    )
                continue
            if cut:
                yield base, buf[:cut]
            buf, base = buf[cut:], base + cut
            if not raw:
                return


def span_document(raw: bytes) -> str:
    """The document a block's bytes hold (``""`` for a blank block); raises UnicodeDecodeError."""
    return raw.decode("utf-8").replace("\r\n", "\n").strip()


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
