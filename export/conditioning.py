"""Topic and style conditioning: what the encoder sees as words, what a caption is about, whose voice it uses.

Built once from the training captions (`build_conditioning`), stored in the bundle, and run in-graph by
`encode` (`Conditioner`), so every transport gets it with the one `encode` call it already makes:

- **Concepts.** The encoder's ImageNet classifier gives class probabilities; `concepts/imagenet_words.tsv`
  maps each class to the everyday word captions use ("tabby" → cat), and a word's probability is the sum
  of its classes'. The photo's top concept words are its default topic.
- **Topic.** Up to `TOPIC_SLOTS` content words, embedded by the decoder's own word embedding. The user's
  free text is tokenized in-graph; a word outside the vocabulary is tried without a plural "s", then
  dropped; with no content word left the topic falls back to the photo's concepts.
- **Style.** One learned vector per template with enough captions (a "style"). Given a template id, the
  caption takes that voice. Given none, styles are ranked for the row by how well they fit its topic
  (pointwise mutual information of the topic words with each template's captions) and the image (cosine
  similarity of the backbone features with each template's), and the row takes the `style_rank`-th.
"""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from export.tokenizer import split_words
from memefly.contract import SPECIAL_TOKENS, UNK

TOPIC_SLOTS = 2
CONCEPTS_PER_IMAGE = 3
TOPIC_MIN_PROBABILITY = 0.15
"""A concept word becomes the default topic only when the classifier gives it at least this much."""
MIN_STYLE_CAPTIONS = 50
"""A template needs this many training captions for its voice to be learned as a style."""
CATCH_PHRASE_SHARE = 0.12
"""A word in more than this share of one template's captions is that template's catch phrase ("y u no",
"one does not simply"), not a topic."""
IMAGE_AFFINITY_WEIGHT = 6.0
"""How much the image's likeness to a template counts against the topic's PMI when styles are chosen."""
PMI_SMOOTHING = 0.5
NEAR_TEMPLATE = 0.9
"""Cosine similarity of backbone features above which an image counts as a template the decoder knows."""

WORDS_FILE = Path(__file__).parent / "concepts" / "imagenet_words.tsv"


@functools.cache
def stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    # Words captions use as filler that sklearn's list lacks.
    return frozenset(ENGLISH_STOP_WORDS) | {
        "im", "i'm", "don't", "dont", "it's", "you're", "can't", "just", "like", "get", "got", "know", "make",
        "gonna", "want", "say", "said", "really", "time", "one", "good", "going", "let", "people", "thing",
        "things", "meme", "memes", "that's", "didn't", "doesn't", "isn't", "i'll", "i've", "when", "u", "lol",
    }  # fmt: skip


def content_word_mask(vocabulary: list[str]) -> np.ndarray:
    """[V] bool: words a topic may hold (alphabetic, not a stop word, not a special token)."""
    stops = stop_words()
    return np.array(
        [
            i >= len(SPECIAL_TOKENS) and bool(re.fullmatch(r"[a-z][a-z']+", word)) and word not in stops
            for i, word in enumerate(vocabulary)
        ]
    )


def concept_words(vocabulary: list[str], words_file: Path = WORDS_FILE) -> tuple[list[str], np.ndarray]:
    """(the concept words in the vocabulary, sorted; each ImageNet class's index into them, or len for none)."""
    from export.concepts.build_words import read_words

    known = set(vocabulary)
    per_class = [word if word in known else "" for word in read_words(words_file)]
    words = sorted({word for word in per_class if word})
    index = {word: i for i, word in enumerate(words)}
    return words, np.array([index.get(word, len(words)) for word in per_class], np.int32)


@dataclass
class ConditioningData:
    """What the bundle stores for conditioning, besides the decoder's weights."""

    styles: list[str]
    """Template ids with a learned style, in style-id order (style id = index + 1; 0 is no style)."""
    style_pmi: np.ndarray
    """[V, S] PMI of each word with each style's captions."""
    style_features: np.ndarray
    """[S, F] backbone features of each style's template image."""

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            styles=np.array(self.styles),
            style_pmi=self.style_pmi.astype(np.float16),
            style_features=self.style_features.astype(np.float16),
        )

    @classmethod
    def load(cls, path: Path) -> ConditioningData:
        with np.load(path) as stored:
            return cls(
                [str(s) for s in stored["styles"]],
                stored["style_pmi"].astype(np.float32),
                stored["style_features"].astype(np.float32),
            )


def catch_phrase_words(ids: np.ndarray, templates: list[str]) -> dict[str, set[int]]:
    """Per template, the word ids in more than `CATCH_PHRASE_SHARE` of its captions."""
    documents: dict[str, Counter[int]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for row, template in zip(ids, templates, strict=True):
        documents[template].update(set(int(i) for i in row if i))
        totals[template] += 1
    return {
        template: {word for word, n in counts.items() if n > CATCH_PHRASE_SHARE * totals[template]}
        for template, counts in documents.items()
    }


def topic_candidates(ids: np.ndarray, templates: list[str], content: np.ndarray, width: int = 8) -> np.ndarray:
    """[N, width] each caption's own content words (not its template's catch phrase), zero-padded."""
    catch = catch_phrase_words(ids, templates)
    out = np.zeros((len(ids), width), np.int32)
    for n, (row, template) in enumerate(zip(ids, templates, strict=True)):
        seen: list[int] = []
        for i in row:
            i = int(i)
            if i and content[i] and i not in catch[template] and i not in seen:
                seen.append(i)
        out[n, : min(width, len(seen))] = seen[:width]
    return out


def build_style_pmi(ids: np.ndarray, style_of_caption: np.ndarray, num_styles: int, vocab_size: int) -> np.ndarray:
    """[V, S] log P(word | style) − log P(word), smoothed; counts each word once per caption."""
    counts = np.zeros((vocab_size, num_styles), np.float64)
    for row, style in zip(ids, style_of_caption, strict=True):
        if style > 0:
            words = np.unique(row[row > 0])
            counts[words, style - 1] += 1
    per_style = counts.sum(axis=0, keepdims=True)
    overall = counts.sum(axis=1, keepdims=True)
    p_given_style = (counts + PMI_SMOOTHING) / (per_style + PMI_SMOOTHING * vocab_size)
    p_word = (overall + PMI_SMOOTHING * num_styles) / (overall.sum() + PMI_SMOOTHING * num_styles * vocab_size)
    return np.log(p_given_style / p_word).astype(np.float32)


class Conditioner(tf.Module):
    """The in-graph half: concepts from class probabilities, topic ids from text, style ids from names."""

    def __init__(self, data: ConditioningData, vocabulary: list[str], table: tf.lookup.StaticHashTable) -> None:
        super().__init__()
        self.styles = list(data.styles)
        words, class_word = concept_words(vocabulary)
        self.concept_words = words
        self.vocab_words = tf.constant(vocabulary)
        self.word_table = table
        self.content = tf.constant(content_word_mask(vocabulary))
        self.class_word = tf.constant(class_word)
        self.concept_names = tf.constant([*words, ""])
        self.concept_vocab_ids = tf.constant([vocabulary.index(w) for w in words] + [0], tf.int32)
        self.style_names = tf.constant(["", *self.styles])
        self.style_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.styles or [""], tf.string),
                tf.constant(list(range(1, len(self.styles) + 1)) or [0], tf.int32),
            ),
            default_value=0,
        )
        self.style_pmi = tf.constant(data.style_pmi, tf.float32)
        features = data.style_features / np.maximum(np.linalg.norm(data.style_features, axis=1, keepdims=True), 1e-6)
        self.style_features = tf.constant(features, tf.float32)
        self.unk_id = SPECIAL_TOKENS.index(UNK)

    def concepts(self, class_probabilities: tf.Tensor | None, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(words [N, K] string, probabilities [N, K]) best first; "" and 0 where there is none."""
        k = CONCEPTS_PER_IMAGE
        if class_probabilities is None or not self.concept_words:
            return tf.fill([images, k], ""), tf.zeros([images, k])
        buckets = len(self.concept_words) + 1
        per_word = tf.transpose(
            tf.math.unsorted_segment_sum(tf.transpose(class_probabilities), self.class_word, buckets)
        )
        per_word = per_word[:, :-1]
        top = tf.math.top_k(per_word, k=min(k, buckets - 1))
        names = tf.gather(self.concept_names, top.indices)
        pad = k - min(k, buckets - 1)
        names = tf.pad(names, [[0, 0], [0, pad]], constant_values="")
        probabilities = tf.pad(top.values, [[0, 0], [0, pad]])
        return names, probabilities

    def default_topic_ids(self, names: tf.Tensor, probabilities: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
        """[N, TOPIC_SLOTS] vocabulary ids of the concept words likely enough to be the topic. A known
        template is its own subject: its concepts ("guy" for most of them) would only pull its captions
        away from its voice, so it has no default topic."""
        ids = self._lookup(names[:, :TOPIC_SLOTS])
        keep = (probabilities[:, :TOPIC_SLOTS] >= TOPIC_MIN_PROBABILITY) & (names[:, :TOPIC_SLOTS] != "")
        keep &= ~self.looks_like_a_template(features)[:, None]
        return tf.where(keep, ids, 0)

    def _lookup(self, words: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.word_table.lookup(words), tf.int32)

    def topic_ids(self, text: tf.Tensor, default: tf.Tensor) -> tf.Tensor:
        """[M, TOPIC_SLOTS] ids of the first content words of each `text` ("" → `default`'s row)."""
        words = split_words(text)
        ids = tf.ragged.map_flat_values(self._lookup, words)
        singular = tf.ragged.map_flat_values(lambda w: self._lookup(tf.strings.regex_replace(w, "(.)s$", r"\1")), words)
        ids = tf.where(tf.equal(ids, self.unk_id), singular, ids)
        ids = tf.ragged.boolean_mask(ids, tf.ragged.map_flat_values(lambda i: tf.gather(self.content, i), ids))
        ids = ids[:, :TOPIC_SLOTS].to_tensor(0, shape=[None, TOPIC_SLOTS])
        given = tf.reduce_any(ids > 0, axis=1, keepdims=True)
        return tf.where(given, ids, default)

    def topic_text(self, ids: tf.Tensor) -> tf.Tensor:
        """[M] the topic words, space-separated."""
        words = tf.where(ids > 0, tf.gather(self.vocab_words, ids), "")
        return tf.strings.strip(tf.strings.reduce_join(words, axis=1, separator=" "))

    def style_ids(
        self, style: tf.Tensor, style_rank: tf.Tensor, topic_ids: tf.Tensor, features: tf.Tensor
    ) -> tf.Tensor:
        """[M] style ids: the named style, or for "" the `style_rank`-th best fit of topic and image."""
        named = self.style_table.lookup(style)
        if not self.styles:
            return named
        present = tf.cast(topic_ids > 0, tf.float32)
        pmi = tf.reduce_sum(tf.gather(self.style_pmi, topic_ids) * present[..., None], axis=1)
        pmi /= tf.maximum(tf.reduce_sum(present, axis=1, keepdims=True), 1.0)
        affinity = pmi + IMAGE_AFFINITY_WEIGHT * self._likeness(features)
        ranked = tf.argsort(affinity, axis=1, direction="DESCENDING", stable=True)
        rank = tf.clip_by_value(style_rank, 0, len(self.styles) - 1)
        chosen = tf.cast(tf.gather(ranked, rank, batch_dims=1), tf.int32) + 1
        return tf.where(tf.equal(tf.strings.strip(style), ""), chosen, named)

    def decoder_features(self, features: tf.Tensor, style_ids: tf.Tensor) -> tf.Tensor:
        """The image features the decoder is shown: the image's own when it looks like a template it was
        trained on, else its style's template image (scaled to the image's own norm).

        The decoder saw only template images in training, and with a style given half the time another
        template's image than its caption's. A photo unlike every template puts its image embedding
        where training never went (coffee and rocket photos got rare words on repeat); its style's
        template is an image the decoder knows, and what the photo shows still reaches it as topic words
        and in the choice of style.
        """
        if not self.styles or features.shape.rank != 2:
            return features
        norm = tf.norm(features, axis=1, keepdims=True)
        stand_in = tf.gather(self.style_features, tf.maximum(style_ids - 1, 0)) * norm
        use = ~self.looks_like_a_template(features) & (style_ids > 0)
        return tf.where(use[:, None], stand_in, features)

    def looks_like_a_template(self, features: tf.Tensor) -> tf.Tensor:
        """[M] bool: the image is (nearly) one of the templates with a style."""
        if not self.styles:
            return tf.zeros(tf.shape(features)[:1], tf.bool)
        return tf.reduce_max(self._likeness(features), axis=1) >= NEAR_TEMPLATE

    def _likeness(self, features: tf.Tensor) -> tf.Tensor:
        """[M, S] cosine similarity of each image's (pooled) backbone features with each style's template."""
        pooled = tf.reduce_mean(features, axis=1) if features.shape.rank == 3 else features
        return tf.matmul(tf.math.l2_normalize(pooled, axis=1), self.style_features, transpose_b=True)

    def style_text(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.style_names, ids)
