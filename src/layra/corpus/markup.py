"""Markup to prose: LibreOffice help pages and Wesnoth catalogue strings.

    paragraphs = help_paragraphs(Path("gl/text/shared/01/01010000.html").read_text())
    text = wesnoth_text("Lies west of <ref>dst='x' text='Morogor'</ref>.")

Pure functions of strings; nothing here touches the file system. Both return
text with entities decoded and whitespace collapsed; judging whether a paragraph
is prose worth keeping is :mod:`layra.corpus.text`'s job.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# Elements whose content is never prose: code samples, scripts, the "how to get
# here" menu paths, lists of related links and the page's debug footer. XHP
# names (the XML sources the HTML is built from) are included so both read alike.
_SKIP_TAGS = {
    "script", "style", "pre", "code", "head", "title", "footer", "noscript", "button",
    "bookmark", "bookmark_value", "comment", "embedvar", "image", "caseinline", "meta",
}  # fmt: skip
_SKIP_CLASSES = {
    "bascode", "pycode", "code", "codeintable", "smathcode", "howtoget", "relatedtopics",
    "related", "debug", "iconcell", "iconimage", "genericimage", "screenshot", "image",
}  # fmt: skip
# Elements that start a new paragraph (HTML help pages and XHP sources).
_BLOCK_TAGS = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th", "dt", "dd", "div", "tr",
    "paragraph", "section", "table", "tablecell",
}  # fmt: skip
_VOID_TAGS = {"br", "img", "input", "meta", "link", "hr", "wbr", "col", "area", "source"}


class _HelpParser(HTMLParser):
    """Collect the paragraphs of a help page's content area.

    Inline switches (``span.switchinline``) hold hidden per-platform variants
    ("Command" on macOS, "Ctrl" by default): only the default variant (the one
    without a class) is kept, else the text would read "Command Ctrl". Block
    switches hold whole per-application paragraphs, all of which are kept.
    """

    def __init__(self, content_id: str | None) -> None:
        super().__init__(convert_charrefs=True)
        # Without a content area (XHP sources) every element is content, and
        # elements HTML calls void (<meta>, <image>) have children.
        self.active_default = content_id is None
        self.content_id = content_id
        self.void = _VOID_TAGS if content_id is not None else {"br"}
        # Frames: (tag, active, skip, is_inline_switch)
        self.stack: list[tuple[str, bool, bool, bool]] = []
        self.current: list[str] = []
        self.paragraphs: list[str] = []

    def _state(self) -> tuple[bool, bool, bool]:
        if not self.stack:
            return self.active_default, False, False
        _, active, skip, switch = self.stack[-1]
        return active, skip, switch

    def _flush(self) -> None:
        text = " ".join("".join(self.current).split())
        if text:
            self.paragraphs.append(text)
        self.current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        active, skip, in_switch = self._state()
        if tag in self.void:
            if tag == "br" and active and not skip:
                self.current.append(" ")
            return
        active = active or (self.content_id is not None and a.get("id") == self.content_id)
        skip = (
            skip
            or tag in _SKIP_TAGS
            or bool(classes & _SKIP_CLASSES)
            or (in_switch and "hidden" in a and bool(classes))  # a non-default variant
        )
        if tag in _BLOCK_TAGS and active and not skip:
            self._flush()
        self.stack.append((tag, active, skip, "switchinline" in classes))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        # Pop to the matching open tag; tolerate unclosed inner elements.
        if not any(frame[0] == tag for frame in self.stack):
            return
        while self.stack:
            name, active, skip, _ = self.stack.pop()
            if name == tag:
                if tag in _BLOCK_TAGS and active and not skip:
                    self._flush()
                return

    def handle_data(self, data: str) -> None:
        active, skip, _ = self._state()
        if active and not skip:
            self.current.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def help_paragraphs(page: str) -> list[str]:
    """The paragraphs of one LibreOffice help page (HTML, or its XHP source), in order.

    For HTML pages only the ``#DisplayArea`` content is read (no navigation,
    index or footer). Code samples, menu-path boxes, related-topic link lists and
    hidden platform variants are dropped; entities are decoded; whitespace inside
    a paragraph is collapsed to single spaces. Empty paragraphs are omitted.
    """
    content_id = "DisplayArea" if 'id="DisplayArea"' in page else None
    parser = _HelpParser(content_id)
    parser.feed(page)
    parser.close()
    return parser.paragraphs


# Wesnoth help markup keeps the visible text in a text='...' attribute.
_WESNOTH_TEXT_ATTR = re.compile(
    r"<(ref|bold|italic|header|format|jump)>[^<]*?\btext='([^']*)'[^<]*</\1>", re.S
)
_WESNOTH_DROP = re.compile(r"<(img|jump)>.*?</\1>", re.S)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
# "female^Assassin", "race^Goblin": a disambiguation prefix that is not shown.
_CONTEXT_PREFIX = re.compile(r"^[\w ]+\^")


def wesnoth_text(s: str) -> str:
    """A Wesnoth string with its markup resolved to the text a player sees.

    ``<ref>``/``<bold>``/``<italic>`` help markup becomes its ``text='...'``
    value, images and jumps are removed, Pango tags (``<span ...>``, ``<b>``)
    are dropped keeping their content, a leading ``context^`` prefix is
    removed and entities are decoded. Newlines are kept (they separate the
    string's paragraphs); other whitespace is left as is.
    """
    s = _CONTEXT_PREFIX.sub("", s)
    s = _WESNOTH_TEXT_ATTR.sub(lambda m: m.group(2), s)
    s = _WESNOTH_DROP.sub("", s)
    s = _TAG.sub("", s)
    return html.unescape(s)
