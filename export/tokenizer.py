"""The one tokenizer, in TensorFlow ops: used by training, baked into the export, never re-implemented.

Text is normalised (Unicode lower case, punctuation split into tokens, quote marks around words
and double quotes dropped), one line per text box; boxes are joined by the `<sep>` token so a multi-box caption is one
sequence the gateway splits again for rendering.
"""

from __future__ import annotations

from collections import Counter

import tensorflow as tf

from memefly.contract import BOX_SEPARATOR_TEXT, SEP, SPECIAL_TOKENS, UNK
from memefly.text import caption_text

__all__ = ["Tokenizer", "build_vocabulary", "caption_text", "split_words", "write_vocabulary"]


def split_words(text: tf.Tensor) -> tf.RaggedTensor:
    """string [N] → ragged string [N, (words)]."""
    text = tf.strings.lower(text, encoding="utf-8")
    # Apostrophes belong to words ("don't") but quotes around words do not ("'no'" → "no").
    text = tf.strings.regex_replace(text, r"[\"“”«»]", " ")
    text = tf.strings.regex_replace(text, r"(^|\s)'+", r"\1")
    text = tf.strings.regex_replace(text, r"'+(\s|$)", r"\1")
    text = tf.strings.regex_replace(text, r"([^\pL\pN\s'])", r" \1 ")
    text = tf.strings.regex_replace(text, r"[ \t\r\f\v]*" + BOX_SEPARATOR_TEXT + r"\s*", f" {SEP} ")
    return tf.strings.split(tf.strings.strip(text))


def build_vocabulary(texts: list[str], max_size: int, min_count: int, batch_size: int = 4096) -> list[str]:
    """Special tokens first, then words by descending count (ties by word), cut at size and count."""
    counts: Counter[str] = Counter()
    for start in range(0, len(texts), batch_size):
        words = split_words(tf.constant(texts[start : start + batch_size])).flat_values.numpy()
        counts.update(word.decode("utf-8") for word in words)
    for token in SPECIAL_TOKENS:
        counts.pop(token, None)
    ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
    return list(SPECIAL_TOKENS) + [word for word, _ in ranked[: max_size - len(SPECIAL_TOKENS)]]


class Tokenizer(tf.Module):
    """text string [N] → ids int32 [N, L] (padded with `<pad>` = 0) and lengths int32 [N]."""

    def __init__(self, vocabulary_file: str, max_length: int) -> None:
        super().__init__()
        self.vocabulary_asset = tf.saved_model.Asset(vocabulary_file)
        self.max_length = max_length
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.vocabulary_asset,
                key_dtype=tf.string,
                key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=SPECIAL_TOKENS.index(UNK),
        )

    def vocabulary(self) -> tf.Tensor:
        lines = tf.strings.split(tf.io.read_file(self.vocabulary_asset.asset_path), "\n")
        return tf.boolean_mask(lines, tf.strings.length(lines) > 0)

    def __call__(self, text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        words = split_words(text)[:, : self.max_length]
        ids = tf.cast(tf.ragged.map_flat_values(self.table.lookup, words), tf.int32)
        return ids.to_tensor(default_value=0), tf.cast(ids.row_lengths(), tf.int32)


def write_vocabulary(vocabulary: list[str], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary) + "\n")
