"""Reading a big JSON object piece by piece, so a fal result never sits in memory whole.

fal's RLE answers are one JSON object whose bulk is one or two long arrays (``frames``,
or ``rle`` + ``metadata`` + ``boxes``), one element per video frame. :func:`members`
walks the top-level object from a stream of byte chunks: small values come back parsed,
the arrays named in ``stream`` come back as an iterator of their elements, each parsed
by the stdlib's C scanner (``json.JSONDecoder.raw_decode``) as soon as its bytes are in.
Memory: one element plus one chunk. Key order and whitespace are free, as in any JSON.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_DELIMITER = re.compile(r"[ \t\n\r,\]}]")
_DECODER = json.JSONDecoder()


class JsonStreamError(ValueError):
    """The bytes are not the JSON shape expected (or not JSON at all)."""


class _Reader:
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.offset = 0  # characters dropped from the front of buf so far (for messages)

    def more(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at the end."""
        if self.eof:
            return False
        chunk = next(self._chunks, None)
        try:
            text = self._utf8.decode(chunk if chunk is not None else b"", final=chunk is None)
        except UnicodeDecodeError as exc:
            raise JsonStreamError(f"not UTF-8 text ({exc})") from None
        self.offset += self.pos
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        self.eof = chunk is None
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            found = repr(c) if c else "the end"
            raise JsonStreamError(f"expected one of {chars!r} at character {self.offset + self.pos}, found {found}")
        self.pos += 1
        return c

    def value(self) -> Any:
        while True:
            if self.peek() not in '{["':
                # A number or literal may be cut by the chunk boundary ("-1" of "-1.5e-3"): it
                # is whole only once a delimiter (or the end) follows it.
                while not _DELIMITER.search(self.buf, self.pos) and self.more():
                    pass
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.more():
                    continue
                raise JsonStreamError(f"{exc.msg} at character {self.offset + exc.pos}") from None
            self.pos = end
            return obj


def _items(reader: _Reader) -> Iterator[Any]:
    reader.expect("[")
    if reader.peek() == "]":
        reader.pos += 1
        return
    while True:
        yield reader.value()
        if reader.expect(",]") == "]":
            return


def members(chunks: Iterable[bytes], stream: frozenset[str] | set[str] = frozenset()) -> Iterator[tuple[str, Any]]:
    """(key, value) of each top-level member of the JSON object in ``chunks``. For a key in
    ``stream`` whose value is an array, the value is an iterator of its elements; consume it
    (or not: what is left is skipped) before asking for the next member."""
    reader = _Reader(chunks)
    reader.expect("{")
    if reader.peek() == "}":
        reader.pos += 1
        return
    while True:
        key = reader.value()
        if not isinstance(key, str):
            raise JsonStreamError(f"an object key is {type(key).__name__}, expected a string")
        reader.expect(":")
        if key in stream and reader.peek() == "[":
            items = _items(reader)
            yield key, items
            for _ in items:  # the caller stopped early: skip the rest
                pass
        else:
            yield key, reader.value()
        if reader.expect(",}") == "}":
            break
    if reader.peek():
        raise JsonStreamError(f"extra data after the JSON object at character {reader.offset + reader.pos}")


def array_items(chunks: Iterable[bytes]) -> Iterator[Any]:
    """The elements of a top-level JSON array, one at a time."""
    reader = _Reader(chunks)
    yield from _items(reader)
    if reader.peek():
        raise JsonStreamError(f"extra data after the JSON array at character {reader.offset + reader.pos}")
