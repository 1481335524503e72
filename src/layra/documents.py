"""How text is cut into documents: one rule for training, evaluation, corpora and held-out files.

    docs = split_documents(Path("gl.txt").read_text())    # a .txt file: blank-line separated
    docs = read_documents("runs/gl/heldout/glg.jsonl")     # .txt, or .jsonl rows {"text": ...}
    docs, cut = read_leading_documents("gl.txt", 4000)     # stops reading after ~4000 bytes
    text = documents_jsonl(docs)                           # exact: read_documents gives docs back
    for start, end in block_spans(raw_bytes): doc = span_document(raw_bytes[start:end])

A **blank line** is a line (``\\n``-terminated; ``\\r\\n`` counts as ``\\n``) whose
characters are all whitespace, or none. A ``.txt`` file's documents are the blocks
between runs of blank lines, each stripped of surrounding whitespace; empty ones are
dropped. So a ``.txt`` document never contains a blank line — a document that does
(a JSONL row, a web page) is kept whole only in JSONL, which is why a run's held-out
documents are saved as ``heldout/LANG.jsonl``.

Files are read in chunks, never whole: reading stops once ``max_bytes`` of documents
are in hand, a file with a NUL byte or mostly control bytes is refused as not text,
and no document (or JSONL line) may be larger than :data:`MAX_DOCUMENT_BYTES`, so a
tokenizer is never handed one multi-GB string.

The same rule works on raw UTF-8 bytes (:func:`block_spans`, :func:`blank_line_cut`), so a
``.txt`` file of any size is split in pieces without decoding it whole, and a document is
found again by its byte span (the prepared-data store, :mod:`layra.prepare`):
``[span_document(b) for b in blocks] == split_documents(text)`` with empty ones dropped.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from layra.errors import LayraError

# A newline, then a line of whitespace other than newlines, then its newline.
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
JSONL_FIELD = "text"
CHUNK = 256 << 10  # bytes read at a time
# A larger document (or JSONL line) is refused: 16 MiB of text is a 3,000-page book, and a
# tokenizer turns one string into Python lists of ~36 B per token in one go.
MAX_DOCUMENT_BYTES = 16 << 20
# Control bytes (not tab, newline, carriage return, form feed) that make a chunk "binary".
_CONTROL = bytes([*range(0, 9), 11, *range(14, 32), 127])
MAX_CONTROL_SHARE = 0.1


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


def txt_pieces(path: str | Path, piece_bytes: int = 1 << 24) -> Iterator[tuple[int, bytes]]:
    """A text file as ``(offset, bytes)`` pieces of about ``piece_bytes``, each cut just
    after a blank line (so their documents are the file's), read in bounded memory.

    Raises :class:`LayraError` for bytes that are not text (:func:`check_text_bytes`) and
    for more than :data:`MAX_DOCUMENT_BYTES` without a blank line (one document too large).
    """
    with open(path, "rb") as f:
        buf, base = b"", 0
        while True:
            raw = f.read(piece_bytes)
            check_text_bytes(raw, base + len(buf), Path(path))
            buf += raw
            cut = len(buf) if not raw else blank_line_cut(buf)
            if cut < 0:
                if len(buf) > MAX_DOCUMENT_BYTES:
                    raise _too_large(Path(path), f"the text from byte {base:,} (no blank line)")
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


def check_text_bytes(chunk: bytes, offset: int, path: Path) -> None:
    """Refuse ``chunk`` (read at byte ``offset`` of ``path``) if it is not text: a NUL
    byte, or more than :data:`MAX_CONTROL_SHARE` control bytes."""
    nul = chunk.find(b"\0")
    if nul >= 0:
        raise LayraError(
            f"{path} is not a text file (a NUL byte at byte {offset + nul:,}); give UTF-8 text"
        )
    if chunk:
        control = len(chunk) - len(chunk.translate(None, _CONTROL))
        if control > max(16, MAX_CONTROL_SHARE * len(chunk)):
            raise LayraError(
                f"{path} is not a text file ({control / len(chunk):.0%} control bytes in bytes "
                f"{offset:,}-{offset + len(chunk):,}); give UTF-8 text"
            )


def _too_large(path: Path, what: str) -> LayraError:
    return LayraError(
        f"{path}: {what} is larger than {MAX_DOCUMENT_BYTES >> 20} MiB, more than layra reads "
        "as one document; separate documents with blank lines (.txt) or rows (.jsonl), or "
        "give --max-bytes"
    )


def _chunks(f: BinaryIO, path: Path) -> Iterator[str]:
    """Decoded, checked text of ``f``, a chunk at a time (a character split between two
    chunks is joined by the incremental decoder)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    while True:
        raw = f.read(CHUNK)
        check_text_bytes(raw, offset, path)
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise LayraError(f"{path} is not UTF-8 ({e.reason} at byte {offset + e.start})") from e
        if not raw:
            return
        offset += len(raw)
        yield text


def _txt_documents(f: BinaryIO, path: Path, limit: int) -> Iterator[tuple[str, bool]]:
    """``(document, complete)`` of a ``.txt`` file in order, as :func:`split_documents` cuts
    them. A document still growing past ``limit`` characters is yielded once, cut
    (``complete`` False), and reading ends there."""
    tail, cr = "", ""
    for text in _chunks(f, path):
        # "\r\n" counts as "\n"; a "\r" ending one chunk waits for the next one's "\n".
        text = cr + text
        cr = "\r" if text.endswith("\r") else ""
        tail += text[: len(text) - len(cr)].replace("\r\n", "\n")
        end = 0
        for m in _BLANK_LINE.finditer(tail):
            doc = tail[end : m.start()].strip()
            end = m.end()
            if doc:
                yield doc, True
        tail = tail[end:]
        if len(tail) > limit and len(tail.strip()) > limit:
            yield tail.strip(), False
            return
    tail += cr
    if tail.strip():
        yield tail.strip(), True


def _jsonl_rows(f: BinaryIO, path: Path) -> Iterator[tuple[str, bool]]:
    """``(document, True)`` per JSONL row with text; lines are read one at a time, each
    at most twice :data:`MAX_DOCUMENT_BYTES` (room for escapes)."""
    offset = 0
    for n, raw in enumerate(iter(lambda: f.readline(2 * MAX_DOCUMENT_BYTES + 1), b""), 1):
        if len(raw) > 2 * MAX_DOCUMENT_BYTES:
            raise _too_large(path, f"line {n}")
        check_text_bytes(raw, offset, path)
        offset += len(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LayraError(
                f"{path} is not UTF-8 ({e.reason} at byte {offset - len(raw) + e.start})"
            ) from e
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LayraError(f"{path}:{n}: not a JSON line ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get(JSONL_FIELD), str):
            raise LayraError(f'{path}:{n}: expected {{"{JSONL_FIELD}": "..."}}')
        if row[JSONL_FIELD].strip():
            yield row[JSONL_FIELD].strip(), True


def read_leading_documents(
    path: str | Path, max_bytes: int | None = None
) -> tuple[list[str], bool]:
    """The leading documents of ``path`` whose UTF-8 sizes add up to at most ``max_bytes``
    (all of them if None), and whether any were left out.

    If the first document alone is larger, its head is kept (cut at a character
    boundary). Reading stops as soon as that is decided, so a 2 GB file costs what its
    first ``max_bytes`` do. Raises :class:`LayraError` for a missing, unreadable,
    non-UTF-8 or binary file, a malformed JSONL line and a document larger than
    :data:`MAX_DOCUMENT_BYTES`.
    """
    p = Path(path)
    if max_bytes is not None and max_bytes <= 0:
        raise LayraError(f"--max-bytes must be positive, got {max_bytes}")
    limit = MAX_DOCUMENT_BYTES if max_bytes is None else min(max_bytes, MAX_DOCUMENT_BYTES)
    docs: list[str] = []
    total = 0
    try:
        with p.open("rb") as f:
            rows = _jsonl_rows(f, p) if p.suffix == ".jsonl" else _txt_documents(f, p, limit)
            for doc, complete in rows:
                size = len(doc.encode("utf-8"))
                if max_bytes is not None and total + size > max_bytes:
                    if not docs:  # one huge first document: keep its head, whole characters
                        head = doc.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
                        if head.strip():
                            docs.append(head.strip())
                    return docs, True
                if not complete or size > MAX_DOCUMENT_BYTES:
                    raise _too_large(p, f"document {len(docs) + 1}")
                docs.append(doc)
                total += size
    except IsADirectoryError:
        raise LayraError(f"{p} is a directory, not a text file") from None
    except OSError as e:
        raise LayraError(f"cannot read {p}: {e.strerror or e}") from e
    return docs, False


# The most a whole-text reader (lens, diagnose) takes from one file.
MAX_TEXT_BYTES = 64 << 20


def read_whole_text(path: str | Path, limit: int = MAX_TEXT_BYTES) -> str:
    """All of a UTF-8 text file, read in checked chunks, for readers that need the whole
    text (token statistics). Refuses a directory, a binary file and one larger than
    ``limit`` bytes, having read at most ``limit`` plus one chunk."""
    p = Path(path)
    parts: list[str] = []
    size = 0
    try:
        with p.open("rb") as f:
            for text in _chunks(f, p):
                parts.append(text)
                size += len(text.encode("utf-8"))
                if size > limit:
                    raise LayraError(
                        f"{p} is larger than {limit >> 20} MiB, more than layra reads here; "
                        "give a sample of it (e.g. `head -c 16M`)"
                    )
    except IsADirectoryError:
        raise LayraError(f"{p} is a directory, not a text file") from None
    except OSError as e:
        raise LayraError(f"cannot read {p}: {e.strerror or e}") from e
    return "".join(parts)


def read_documents(path: str | Path) -> list[str]:
    """The documents of a ``.jsonl`` file (one per row's ``text``) or of any other text file.

    Documents are stripped and empty ones dropped in both formats. Raises
    :class:`LayraError` for an unreadable, non-UTF-8, binary or malformed file
    (:func:`read_leading_documents`).
    """
    return read_leading_documents(path)[0]
