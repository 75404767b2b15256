"""Text to meme: the template whose voice best explains a caption someone already wrote.

Each template with a style is encoded once per model version in its own voice (its image, its style,
no topic). A text is scored under every one of them with the model's `score` signature, in one call:
log P(text | template), and the template that gives it the highest wins.

Normalising for length or comparing with a blank image, as a per-text score, shifts every template's
score for that text by the same amount and cannot change which template wins. A per-template
correction (each template's mean advantage on other texts, subtracted) was measured against the raw
score in `make evaluate` and lost: fewer right templates (top-1 47 % against 53 %) and more texts on
the most-picked template (7.5 % against 4.8 % of 400 held-out captions). So the raw score ranks.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.backends import Condition, ModelBackend
from gateway.render import split_top_bottom
from gateway.templates import Template
from memefly.contract import BOX_SEPARATOR_TEXT

SCORE_ROWS_PER_CALL = 4096
"""Calibration scores texts × templates rows; a call carries at most this many."""


@dataclass(frozen=True)
class TemplateScore:
    template: str
    score: float
    """Advantage in nats over the average template."""


def relative(log_probs: np.ndarray) -> np.ndarray:
    """[texts, templates] log-probabilities → each template's advantage over the mean of all, per text."""
    return log_probs - log_probs.mean(axis=1, keepdims=True)


def split_into_boxes(text: str, boxes: int) -> list[str]:
    """The text as at most `boxes` texts: its own lines if it has several (extra lines join the last),
    else cut at word boundaries into even parts (top and bottom nearest the middle for two)."""
    boxes = max(boxes, 1)
    lines = [line.strip() for line in text.split(BOX_SEPARATOR_TEXT) if line.strip()]
    if len(lines) > 1:
        return lines if len(lines) <= boxes else [*lines[: boxes - 1], " ".join(lines[boxes - 1 :])]
    if boxes == 1:
        return [" ".join(text.split())]
    if boxes == 2:
        return split_top_bottom(text)
    words = text.split()
    size = max(1, -(-len(words) // boxes))
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


class TemplatePicker:
    """Scores texts under each styled template of one model version (`backend` pinned to it)."""

    def __init__(self, backend: ModelBackend, templates: Sequence[Template], styles: Sequence[str]) -> None:
        known = {t.id: t for t in templates}
        self.backend = backend
        self.templates = [known[s] for s in styles if s in known]
        self._contexts: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return bool(self.templates)

    def _template_contexts(self) -> np.ndarray:
        with self._lock:
            if self._contexts is None:
                images = [t.image_path.read_bytes() for t in self.templates]
                conditions = [Condition(i, "", t.id) for i, t in enumerate(self.templates)]
                self._contexts = self.backend.encode_rows(images, conditions).contexts
            return self._contexts

    def log_probs(self, texts: list[str]) -> np.ndarray:
        """[texts, templates] log P(text | template), templates in `self.templates` order, in calls of at
        most `SCORE_ROWS_PER_CALL` rows."""
        contexts = self._template_contexts()
        count = len(contexts)
        rows = [(i, j) for i in range(len(texts)) for j in range(count)]
        out = np.zeros(len(rows), np.float64)
        for start in range(0, len(rows), SCORE_ROWS_PER_CALL):
            chunk = rows[start : start + SCORE_ROWS_PER_CALL]
            out[start : start + len(chunk)] = self.backend.score(
                contexts[[j for _, j in chunk]], [texts[i] for i, _ in chunk]
            )
        return out.reshape(len(texts), count)

    def scores(self, texts: list[str]) -> np.ndarray:
        """[texts, templates] each template's advantage in nats over the average template."""
        return relative(self.log_probs(texts))

    def pick(self, text: str, top: int = 5) -> list[TemplateScore]:
        """The `top` templates for `text`, best first."""
        scores = self.scores([text])[0]
        order = np.argsort(-scores, kind="stable")[:top]
        return [TemplateScore(self.templates[i].id, float(scores[i])) for i in order]
