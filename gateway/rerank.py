"""Re-rank sampled captions by how much the image, rather than meme language in general, explains them.

A caption's specificity is its pointwise mutual information with the image,
log P(caption | image) − log P(caption | blank image), both from the model's `score` signature. Sampling
alone favours captions that fit any picture ("when you see the ..."); keeping the most specific of
several samples favours the ones that belong to this template, and still draws each one at random.
Pure NumPy apart from drawing the blank image once.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

BLANK_GREY = 128
BLANK_SIZE = 512


def blank_image_jpeg() -> bytes:
    """The image that carries no information: one mid-grey square, as JPEG."""
    buffer = io.BytesIO()
    Image.new("RGB", (BLANK_SIZE, BLANK_SIZE), (BLANK_GREY,) * 3).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def specificity(log_prob_image: np.ndarray, log_prob_blank: np.ndarray) -> np.ndarray:
    """log P(c | image) − log P(c | blank image), per caption."""
    return np.asarray(log_prob_image, np.float64) - np.asarray(log_prob_blank, np.float64)


def most_specific(scores: np.ndarray, texts: Sequence[str], n: int) -> list[int]:
    """Indices of the `n` highest-scoring captions with distinct texts, best first (ties keep input order)."""
    picked: list[int] = []
    seen: set[str] = set()
    for index in np.argsort(-np.asarray(scores), kind="stable").tolist():
        if texts[index] in seen:
            continue
        seen.add(texts[index])
        picked.append(index)
        if len(picked) == n:
            break
    return picked
