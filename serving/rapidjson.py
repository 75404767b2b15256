"""rapidjson as TF Serving uses it (json_tensor.cc): parsing a request body, pretty-printing a
response, and the short re-printed values its error messages quote.

Reproduced in Python because clients compare TF Serving's bodies as text: rapidjson's
``PrettyWriter`` indents by 4 spaces and can print arrays on one line, ``Writer::Double`` prints
shortest digits in its own notation, and parse errors carry rapidjson's words and byte offsets.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from typing import Any

from serving.errors import InvalidArgumentError

MAX_DEBUG_STRING_BYTES = 256  # kMaxJsonDebugStringBytes


class JsonObject:
    """A parsed JSON object that keeps every member in order, duplicates included, as rapidjson does."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs

    def get(self, key: str, default: Any = None) -> Any:
        return next((value for name, value in self.pairs if name == key), default)

    def __contains__(self, key: str) -> bool:
        return any(name == key for name, _ in self.pairs)


class _Truncated(Exception):
    pass


_CONTROL_ESCAPES = {
    bytes([c]): b"\\" + {8: b"b", 9: b"t", 10: b"n", 12: b"f", 13: b"r"}.get(c, b"u00%02X" % c) for c in range(32)
}
_ESCAPES = {**_CONTROL_ESCAPES, b'"': b'\\"', b"\\": b"\\\\"}
_NEEDS_ESCAPE = re.compile(rb'["\\\x00-\x1f]')


def _quoted(raw: bytes) -> bytes:
    # rapidjson writes other bytes through as they are, valid UTF-8 or not.
    return b'"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()], raw) + b'"'


class PrettyWriter:
    """rapidjson::PrettyWriter with its default 4-space indent, optionally cut off like
    JsonWriterWithLimit once ``limit`` bytes are written."""

    def __init__(self, limit: int | None = None, single_line_arrays: bool = False) -> None:
        self.single_line_arrays = single_line_arrays
        self._parts: list[bytes] = []
        self._size = 0
        self._levels: list[list[Any]] = []  # [in_array, values written]
        self._limit = limit

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def _put(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)

    def _check_limit(self) -> None:
        if self._limit is not None and self._size >= self._limit:
            raise _Truncated

    def _prefix(self) -> None:
        self._check_limit()
        if not self._levels:
            return
        level = self._levels[-1]
        indent = b" " * (4 * len(self._levels))
        if level[0]:
            if level[1]:
                self._put(b", " if self.single_line_arrays else b",")
            if not self.single_line_arrays:
                self._put(b"\n" + indent)
        else:
            if level[1]:
                self._put(b",\n" if level[1] % 2 == 0 else b": ")
            else:
                self._put(b"\n")
            if level[1] % 2 == 0:
                self._put(indent)
        level[1] += 1

    def raw(self, token: bytes) -> None:
        self._prefix()
        self._put(token)

    def string(self, raw: bytes) -> None:
        self.raw(_quoted(raw))

    def start(self, in_array: bool) -> None:
        self._prefix()
        self._put(b"[" if in_array else b"{")
        self._levels.append([in_array, 0])

    def end(self) -> None:
        self._check_limit()
        in_array, count = self._levels.pop()
        if count and not (in_array and self.single_line_arrays):
            self._put(b"\n" + b" " * (4 * len(self._levels)))
        self._put(b"]" if in_array else b"}")


def rapidjson_double(value: float) -> bytes:
    """rapidjson's Writer::Double: the shortest digits, laid out by its Prettify() rules."""
    if math.isnan(value) or math.isinf(value):
        raise _Truncated  # Writer::Double fails on these, which ends the debug string
    if value == 0:
        return b"-0.0" if math.copysign(1, value) < 0 else b"0.0"
    _, digit_tuple, exponent = decimal.Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple))
    stripped = digits.rstrip("0")
    k = int(exponent) + len(digits) - len(stripped)  # value = stripped * 10^k
    digits, length = stripped, len(stripped)
    kk = length + k  # 10^(kk-1) <= value < 10^kk
    if 0 <= k and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif kk < -324:
        text = "0.0"
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return (("-" if value < 0 else "") + text).encode()


def _accept(writer: PrettyWriter, value: Any) -> None:
    if isinstance(value, JsonObject):
        writer.start(in_array=False)
        for name, member in value.pairs:
            writer.string(utf8(name))
            _accept(writer, member)
        writer.end()
    elif isinstance(value, list):
        writer.start(in_array=True)
        for item in value:
            _accept(writer, item)
        writer.end()
    elif isinstance(value, str):
        writer.string(utf8(value))
    elif value is None:
        writer.raw(b"null")
    elif isinstance(value, bool):
        writer.raw(b"true" if value else b"false")
    elif isinstance(value, int) and -(2**63) <= value < 2**64:
        writer.raw(str(value).encode())
    else:
        writer.raw(rapidjson_double(float(value)))


def debug_string(value: Any) -> str:
    """JsonValueToDebugString: the value re-printed for a message, cut after 256 bytes."""
    writer = PrettyWriter(limit=MAX_DEBUG_STRING_BYTES, single_line_arrays=True)
    try:
        _accept(writer, value)
    except _Truncated:
        pass
    return writer.getvalue().decode("utf-8", "replace")


def utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # bytes that were not UTF-8 in the body
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


# Python's json messages (by prefix) and rapidjson's words for the same mistakes.
_PARSE_ERRORS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}


def parse_json(body: bytes) -> JsonObject:
    """ParseJson: the first JSON value of the body (anything after it is ignored), which must be
    an object; errors worded as rapidjson's, with byte offsets."""
    if not body:
        raise InvalidArgumentError("JSON Parse error: The document is empty")
    text = body.decode("utf-8", "surrogateescape").removeprefix("\ufeff")  # rapidjson skips a UTF-8 BOM
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise InvalidArgumentError(f"JSON Parse error: The document is empty. at offset: {len(body)}")
    decoder = json.JSONDecoder(object_pairs_hook=JsonObject)
    try:
        document, _ = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        message = next((ours for theirs, ours in _PARSE_ERRORS.items() if exc.msg.startswith(theirs)), exc.msg)
        if exc.msg == "Expecting ',' delimiter":
            message = (
                "Missing a comma or ']' after an array element."
                if _innermost_container(text, exc.pos) == "["
                else "Missing a comma or '}' after an object member."
            )
        # rapidjson notices an unclosed string only at the end of the body.
        offset = len(body) if exc.msg.startswith("Unterminated string") else len(utf8(text[: exc.pos]))
        raise InvalidArgumentError(f"JSON Parse error: {message} at offset: {offset}") from exc
    if not isinstance(document, JsonObject):
        raise InvalidArgumentError(f"JSON Value: {debug_string(document)} Is not object")
    return document


def _innermost_container(text: str, end: int) -> str:
    stack, in_string, escaped = [], False, False
    for char in text[:end]:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""
