"""Token ids back to caption text. Pure Python: the gateway uses it with the model's own vocabulary.

Tokenizing text into ids is done in TensorFlow ops inside the model (`export/tokenizer.py`), so the
two directions never drift apart: the model decides what a token is, this only joins them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from memefly.contract import BOX_SEPARATOR_TEXT, ModelContract

NO_SPACE_BEFORE = set(".,!?;:%)]}…")
NO_SPACE_AFTER = set("([{#$")


def join_tokens(words: Sequence[str]) -> str:
    """Join word tokens with spaces, attaching punctuation the way it is written."""
    text = ""
    for word in words:
        glue = not text or text[-1] in NO_SPACE_AFTER or (word and word[0] in NO_SPACE_BEFORE)
        text += word if glue else " " + word
    return text


def caption_text(boxes: Iterable[str]) -> str:
    """The model's text input (`tokenize`, `score`) for a caption given as text boxes."""
    return BOX_SEPARATOR_TEXT.join(box.replace(BOX_SEPARATOR_TEXT, " ") for box in boxes)


def ids_to_boxes(ids: Sequence[int], vocabulary: Sequence[str], contract: ModelContract) -> list[str]:
    """Split a generated id sequence at `<sep>` into the caption's text boxes, dropping empty ones."""
    boxes: list[list[str]] = [[]]
    specials = set(contract.special_tokens.values())
    for token_id in ids:
        if token_id == contract.end_id:
            break
        if token_id == contract.sep_id:
            boxes.append([])
        elif token_id not in specials:
            boxes[-1].append(vocabulary[token_id])
    return [join_tokens(words) for words in boxes if words]
