"""memegen.link's text encoding: one URL path segment is one text box.

The documented rules (memegen's README, "Special Characters"):

| in the URL | in the text |
| --- | --- |
| `_`, `-` or a space | a space |
| `__` | `_` |
| `--` | `-` |
| `~n` | a newline |
| `~q` `~a` `~p` `~h` `~s` `~b` `~l` `~g` | `?` `&` `%` `#` `/` `\\` `<` `>` |
| `''` | `"` |
| a segment that is exactly `_` | an empty line |

A segment is read left to right, so `___` is `_` then a space. memegen's table cannot spell every text
(a literal `~q`, or `'` next to `''`), so two escapes of memefly's own close the gaps: `~~` is `~`
and `~'` is `'`. `encode_text` writes them only where the documented table would be misread, so for
any other text it writes what memegen would accept, and `decode_segment(encode_text(t)) == t` always.
"""

from __future__ import annotations

MAX_SEGMENT_LENGTH = 200
"""memegen answers 414 when a segment of the text path is longer than this many bytes of UTF-8
(`render_image` in memegen's app/views/helpers.py: `len(part.encode()) > 200`; documented on its
image route as "Custom text too long (length >200)")."""

_TILDE_ESCAPES = {
    "n": "\n",
    "q": "?",
    "a": "&",
    "p": "%",
    "h": "#",
    "s": "/",
    "b": "\\",
    "l": "<",
    "g": ">",
    "~": "~",
    "'": "'",
}
_ENCODINGS = {"_": "__", "-": "--", " ": "_", '"': "''"} | {
    char: "~" + letter for letter, char in _TILDE_ESCAPES.items() if letter not in "~'"
}
_EMPTY = "_"


def decode_segment(segment: str) -> str:
    """The text of one URL path segment (already percent-decoded), by memegen's rules."""
    if segment == _EMPTY:
        return ""
    text: list[str] = []
    i = 0
    while i < len(segment):
        char, pair = segment[i], segment[i : i + 2]
        if pair in ("__", "--"):
            text.append(char)
            i += 2
        elif char in "_-":
            text.append(" ")
            i += 1
        elif pair == "''":
            text.append('"')
            i += 2
        elif char == "~" and len(pair) == 2 and pair[1] in _TILDE_ESCAPES:
            text.append(_TILDE_ESCAPES[pair[1]])
            i += 2
        else:
            # A lone `~` or `'`, or any other character, stands for itself, as in memegen.
            text.append(char)
            i += 1
    return "".join(text)


def encode_text(text: str) -> str:
    """One text box as a URL path segment that `decode_segment` turns back into exactly `text`.

    The result still needs percent-encoding for characters a URL path cannot hold (`quote`).
    """
    if not text:
        return _EMPTY
    codes: list[str] = []
    following = ""
    # Right to left: whether a character needs a longer spelling depends on what is written after it.
    for char in reversed(text):
        code = _ENCODINGS.get(char, char)
        if char == " " and following.startswith("_"):
            code = "-"  # `_` + `__` would read as `__` + `_`: an underscore, then a space
        elif char == "~" and following[:1] in _TILDE_ESCAPES:
            code = "~~"
        elif char == "'" and following.startswith("'"):
            code = "~'"  # `'` + `''` would read as `''` + `'`
        codes.append(code)
        following = code
    segment = "".join(reversed(codes))
    return "-" if segment == _EMPTY else segment  # a lone space, not an empty line
