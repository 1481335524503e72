"""Read GNU gettext ``.mo`` catalogues (msgid -> msgstr), without executing anything.

    entries = read_mo(Path("gl/LC_MESSAGES/wesnoth-httt.mo").read_bytes())

Format (GNU gettext manual, "The Format of GNU MO Files"): a little- or
big-endian header (magic 0x950412de, revision, N, offset of the original
string table, offset of the translation table), then two tables of N
(length, offset) pairs. An original is ``msgctxt \\x04 msgid [\\0 msgid_plural]``;
a plural translation is its forms joined by ``\\0``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from layra.errors import LayraError

_MAGIC = 0x950412DE


@dataclass(frozen=True)
class Entry:
    msgid: str
    msgstr: str  # first form for plurals
    context: str | None = None
    plural: bool = False


def read_mo(data: bytes, name: str = "catalogue") -> list[Entry]:
    """Every translated entry of a ``.mo`` file, in file order, header excluded.

    Strings are decoded as UTF-8 (what Wesnoth and most modern catalogues
    use); a malformed file raises :class:`LayraError` naming ``name``.
    """
    if len(data) < 20:
        raise LayraError(f"{name}: too short to be a .mo catalogue")
    for endian in ("<", ">"):
        if struct.unpack(endian + "I", data[:4])[0] == _MAGIC:
            break
    else:
        raise LayraError(f"{name}: not a .mo catalogue (bad magic number)")
    _, n, orig_at, trans_at = struct.unpack(endian + "4I", data[4:20])

    def string(table: int, i: int) -> str:
        length, offset = struct.unpack(endian + "2I", data[table + 8 * i : table + 8 * i + 8])
        if offset + length > len(data):
            raise LayraError(f"{name}: string {i} runs past the end of the file")
        try:
            return data[offset : offset + length].decode("utf-8")
        except UnicodeDecodeError as e:
            raise LayraError(f"{name}: string {i} is not UTF-8") from e

    if max(orig_at, trans_at) + 8 * n > len(data):
        raise LayraError(f"{name}: string tables run past the end of the file")
    out = []
    for i in range(n):
        orig, trans = string(orig_at, i), string(trans_at, i)
        context, _, msgid = orig.rpartition("\x04")
        if not msgid:
            continue  # the header entry (empty msgid)
        msgid, sep, _plural = msgid.partition("\x00")
        out.append(Entry(msgid, trans.split("\x00")[0], context or None, plural=bool(sep)))
    return out
