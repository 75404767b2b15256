"""Generated text is untrusted: captions containing a blocked word are dropped, never shown."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# A deliberately short default of slurs; deployments extend it with MEMEFLY_BLOCKED_WORDS_FILE.
DEFAULT_BLOCKED_WORDS = frozenset(
    {"nigger", "nigga", "faggot", "fag", "retard", "retarded", "tranny", "kike", "spic", "chink", "wetback"}
)


class ContentFilter:
    def __init__(self, blocked_words: Iterable[str]) -> None:
        self.blocked = frozenset(word.strip().lower() for word in blocked_words if word.strip())

    @classmethod
    def from_settings(cls, enabled: bool, words_file: Path | None) -> ContentFilter:
        if not enabled:
            return cls(())
        words = set(DEFAULT_BLOCKED_WORDS)
        if words_file is not None:
            words |= {line for line in words_file.read_text(encoding="utf-8").splitlines() if line.strip()}
        return cls(words)

    def allows(self, text: str) -> bool:
        return not any(word in self.blocked for word in re.findall(r"[\w']+", text.lower()))
