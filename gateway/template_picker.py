"""Text to meme: the template whose voice best explains a caption someone already wrote.

Each template with a style is encoded once per model version in its own voice (its image, its style,
its own concepts as topic). A text is scored under every one of them with the model's `score`
signature, in one call: log P(text | template).

The raw log-probability favours templates whose captions are generic: they explain any text fairly
well. Comparing with a blank image, or normalising by length, cannot fix that: both shift every
template's score for a text by the same amount and leave the ranking as it was. What is removed
instead is each template's *bias*: its mean advantage over the other templates on a calibration set of
texts (the templates' own example captions, which ship with the product). A template then wins only by
explaining this text better than it explains text in general.
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
    """Advantage in nats over the average template, after the template's own bias is removed."""


def relative(log_probs: np.ndarray) -> np.ndarray:
    """[texts, templates] log-probabilities → each template's advantage over the mean of all, per text."""
    return log_probs - log_probs.mean(axis=1, keepdims=True)


def rank(log_probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[texts, templates] calibrated scores: advantage over the average template, minus the template's bias."""
    return relative(log_probs) - bias[None, :]


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
        self._bias: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return bool(self.templates)

    def _prepare(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._contexts is None or self._bias is None:
                images = [t.image_path.read_bytes() for t in self.templates]
                conditions = [Condition(i, "", t.id) for i, t in enumerate(self.templates)]
                contexts = self.backend.encode_rows(images, conditions).contexts
                calibration = [BOX_SEPARATOR_TEXT.join(t.example) for t in self.templates if any(t.example)]
                self._bias = relative(self._log_probs(contexts, calibration)).mean(axis=0)
                self._contexts = contexts
            return self._contexts, self._bias

    def _log_probs(self, contexts: np.ndarray, texts: list[str]) -> np.ndarray:
        """[texts, templates] log P(text | template), in calls of at most `SCORE_ROWS_PER_CALL` rows."""
        count = len(contexts)
        rows = [(i, j) for i in range(len(texts)) for j in range(count)]
        out = np.zeros(len(rows), np.float64)
        for start in range(0, len(rows), SCORE_ROWS_PER_CALL):
            chunk = rows[start : start + SCORE_ROWS_PER_CALL]
            out[start : start + len(chunk)] = self.backend.score(
                contexts[[j for _, j in chunk]], [texts[i] for i, _ in chunk]
            )
        return out.reshape(len(texts), count)

    @property
    def bias(self) -> np.ndarray:
        """[templates] each template's mean advantage over the others on the calibration texts."""
        return self._prepare()[1]

    def log_probs(self, texts: list[str]) -> np.ndarray:
        """[texts, templates] log P(text | template), templates in `self.templates` order."""
        contexts, _ = self._prepare()
        return self._log_probs(contexts, texts)

    def scores(self, texts: list[str]) -> np.ndarray:
        """[texts, templates] calibrated scores, templates in `self.templates` order."""
        _, bias = self._prepare()
        return rank(self.log_probs(texts), bias)

    def pick(self, text: str, top: int = 5) -> list[TemplateScore]:
        """The `top` templates for `text`, best first."""
        scores = self.scores([text])[0]
        order = np.argsort(-scores, kind="stable")[:top]
        return [TemplateScore(self.templates[i].id, float(scores[i])) for i in order]
