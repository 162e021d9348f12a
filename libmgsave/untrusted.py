"""Text that others wrote, made safe for where mgsave shows it.

Guest names, titles and metadata come from libvirt (whoever defined the guest chose them),
error messages from libvirt, from a guest's agent and from peers, and everything in a record
from disk. Shown raw, such text could move a terminal's cursor or recolour it (ANSI escapes),
forge a line in the journal or a table (a newline), break a table's alignment (a tab), reverse
what a reader sees (bidi overrides such as U+202E), make the SVG not well-formed XML (control
characters are not allowed in XML 1.0 at all), or fill a screen (a name of 5,000 characters).

``safe`` is the one place that turns such text into what a sink can show: every control,
format, surrogate, unassigned, line and paragraph separator character is escaped visibly
(``\\x1b``, ``\\t``, ``\\u202e``), the length is bounded with a marker saying how much was left
out, and for XML the markup characters are escaped too. JSON needs none of this: it keeps the
exact values, escaped by the JSON encoder. A backslash is left as it is: such names are
unusual, and the escapes are there to be seen, not to be read back.
"""

from __future__ import annotations

import enum
import unicodedata

NAME_LIMIT = 256  # a guest's name or title, a URI, a phase's kind: far more than any real one
MESSAGE_LIMIT = 2000  # an error message, a warning, a note: libvirt's longest are a few hundred

# Cc controls, Cf format (bidi overrides, zero-width joiners), Cs lone surrogates, Cn unassigned
# (U+FFFE and U+FFFF among them, which XML forbids), Zl and Zp (line and paragraph separators).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# XML's five markup characters, as xml.sax.saxutils.escape with quotes would write them: that
# module imports urllib.request (and so http, email, ssl), a tenth of a pass's start-up.
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})


class Sink(enum.Enum):
    TEXT = "text"  # a terminal, a table's cell, a log line, a journal message or field
    XML = "xml"  # the SVG's text and attribute values


def safe(value: object, sink: Sink = Sink.TEXT, *, limit: int = NAME_LIMIT) -> str:
    """``value`` as text that ``sink`` can show as it is: unsafe characters escaped visibly, at
    most ``limit`` characters before the marker that says how many more there were."""
    text = value if isinstance(value, str) else str(value)
    if not (len(text) <= limit and text.isprintable()):  # isprintable: the quick common case
        text = _escaped(text, limit)
    return text.translate(_XML_ESCAPES) if sink is Sink.XML else text


def _escaped(text: str, limit: int) -> str:
    out: list[str] = []
    length = 0
    for index, char in enumerate(text):
        piece = _escape(char) if unicodedata.category(char) in _UNSAFE_CATEGORIES else char
        if length + len(piece) > limit:
            out.append(f"[... {len(text) - index} more characters]")
            break
        out.append(piece)
        length += len(piece)
    return "".join(out)


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def message(value: object, sink: Sink = Sink.TEXT) -> str:
    """``safe`` for a message (an error, a warning, a note): a longer bound than a name's."""
    return safe(value, sink, limit=MESSAGE_LIMIT)
