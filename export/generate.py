"""The whole beam search in-graph, for the `generate` signature: one call captions a batch of images.

It follows the gateway's `BeamSearch` (gateway/search.py) rule for rule, so a caption does not depend
on which side runs the search: k = 2 * beam_width candidates a beam, the `<sep>`/`<end>` rules, the
`<start>`/`<pad>`/`<unk>` bans, no repeated n-gram, ending candidates counted only among the best
`beam_width`, finishing at the maximum length, the early stop, and the n best by length-penalised score.

Layout. Every image keeps `beam_width` slots; a slot whose log-probability is -inf is empty. Live beams
fill the first slots in the order the gateway keeps them, so flat candidate indices, and with them the
ties broken by position, agree with the gateway's stable sort. Log-probabilities and scores are float64,
as in NumPy.

Finished captions go to a pool of `length_limit + 1` blocks of `beam_width` entries: block t holds the
captions that ended at step t, at their rank among that step's candidates, and block `max_length` the
beams cut at the maximum length. Flattened, the pool is in the order the gateway appends to its list of
finished captions, so taking the best by a stable sort picks the same captions. The gateway's results
are also made distinct; beam search never finishes one caption twice (two finished captions differ in
length, or in the beam or the step they ended at), so no de-duplication is needed here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import tensorflow as tf

from memefly.contract import BOX_SEPARATOR_TEXT, GENERATE_MAX_BEAM_WIDTH, ModelContract
from memefly.text import NO_SPACE_AFTER, NO_SPACE_BEFORE

StepFunction = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]
"""`decode_step` without the gather: (tokens [R], state [R, S], context rows [R, ...], k []) →
(top log-probs [R, k'], top ids [R, k'], state [R, S]), k' = min(k, vocabulary size)."""

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class SpecialIds:
    start: int
    end: int
    sep: int
    unk: int
    pad: int


@dataclass(frozen=True)
class SearchInputs:
    """The `generate` signature's settings, as scalar tensors."""

    beam_width: tf.Tensor
    n_best: tf.Tensor
    max_length: tf.Tensor
    length_penalty: tf.Tensor
    no_repeat_ngram_size: tf.Tensor


class _Beams(NamedTuple):
    tokens: tf.Tensor  # int32 [N, W]
    state: tf.Tensor  # float32 [N, W, S]
    sequences: tf.Tensor  # int32 [N, W, L], zero past the current step
    log_probs: tf.Tensor  # float64 [N, W], -inf for an empty slot


class _Pool(NamedTuple):
    ids: tf.Tensor  # int32 [N, B, W, L]
    lengths: tf.Tensor  # int32 [N, B, W]
    log_probs: tf.Tensor  # float64 [N, B, W]
    scores: tf.Tensor  # float64 [N, B, W], -inf for an unused entry
    count: tf.Tensor  # int32 [N]


def _rows(mask: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """A [N] or [N, W] mask with trailing axes to broadcast against `like` (static ranks keep loop shapes)."""
    for _ in range(like.shape.rank - mask.shape.rank):
        mask = mask[..., None]
    return mask


def _minus_inf() -> tf.Tensor:
    return tf.constant(_NEG_INF, tf.float64)


def _where(mask: tf.Tensor, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    return tf.where(_rows(mask, new), new, old)


class _InGraphBeamSearch:
    """The search's constants and steps, built into the graph of one `generate` call."""

    def __init__(
        self,
        step: StepFunction,
        context: tf.Tensor,
        settings: SearchInputs,
        ids: SpecialIds,
        state_size: int,
        length_limit: int,
    ) -> None:
        self.step = step
        self.ids = ids
        self.state_size = state_size
        self.length_limit = length_limit
        self.batch = tf.shape(context)[0]
        self.width = settings.beam_width
        self.n_best = settings.n_best
        self.max_length = tf.minimum(settings.max_length, length_limit)
        self.penalty = tf.cast(settings.length_penalty, tf.float64)
        self.ngram = settings.no_repeat_ngram_size
        # Every beam slot reads its image's context row.
        self.beam_context = tf.repeat(context, self.width, axis=0)
        self.positions = tf.range(length_limit)

    def _length_norm(self, length: tf.Tensor) -> tf.Tensor:
        return tf.pow(tf.cast(tf.maximum(length, 1), tf.float64), self.penalty)

    def _write(self, sequences: tf.Tensor, t: tf.Tensor, tokens: tf.Tensor) -> tf.Tensor:
        return tf.where(tf.equal(self.positions, t)[None, None, :], tokens[:, :, None], sequences)

    def initial(self) -> tuple[_Beams, _Pool]:
        n, w, limit = self.batch, self.width, self.length_limit
        first_slot = tf.equal(tf.range(w), 0)[None, :]
        beams = _Beams(
            tokens=tf.fill([n, w], self.ids.start),
            state=tf.zeros([n, w, self.state_size]),
            sequences=tf.zeros([n, w, limit], tf.int32),
            log_probs=tf.where(first_slot, tf.zeros([n, w], tf.float64), _NEG_INF),
        )
        blocks = limit + 1
        pool = _Pool(
            ids=tf.zeros([n, blocks, w, limit], tf.int32),
            lengths=tf.zeros([n, blocks, w], tf.int32),
            log_probs=tf.zeros([n, blocks, w], tf.float64),
            scores=tf.fill([n, blocks, w], _minus_inf()),
            count=tf.zeros([n], tf.int32),
        )
        return beams, pool

    def _repeats_ngram(self, sequences: tf.Tensor, t: tf.Tensor, top_ids: tf.Tensor) -> tf.Tensor:
        """[N, W, k] mask of candidates that would complete an n-gram the beam already holds."""
        n, limit = self.ngram, self.length_limit
        offsets = tf.range(limit)
        # Window s is tokens s .. s+n-1; it matches when its first n-1 tokens are the beam's last n-1.
        window = tf.minimum(offsets[:, None] + offsets[None, :], limit - 1)  # [s, m] → s + m
        tail = tf.clip_by_value(t - n + 1 + offsets, 0, limit - 1)  # [m] → t - n + 1 + m
        heads = tf.gather(sequences, window, axis=2)  # [N, W, s, m]
        tails = tf.gather(sequences, tail, axis=2)[:, :, None, :]
        compared = offsets[None, :] < n - 1
        matches = tf.reduce_all(tf.equal(heads, tails) | ~compared, axis=3)
        matches &= (offsets + n <= t)[None, None, :]
        follower = tf.gather(sequences, tf.clip_by_value(offsets + n - 1, 0, limit - 1), axis=2)  # [N, W, s]
        seen = matches[:, :, :, None] & tf.equal(follower[:, :, :, None], top_ids[:, :, None, :])
        return tf.reduce_any(seen, axis=2) & (n > 0)

    def _banned(self, beams: _Beams, t: tf.Tensor, top_ids: tf.Tensor) -> tf.Tensor:
        """[N, W, k] mask of candidates no caption may take (see gateway/search.py)."""
        after_word = (t > 0) & tf.not_equal(beams.tokens, self.ids.sep)[:, :, None]
        boundary = tf.equal(top_ids, self.ids.end) | tf.equal(top_ids, self.ids.sep)
        last_step = t + 1 >= self.max_length
        banned = (boundary & ~after_word) | (tf.equal(top_ids, self.ids.sep) & last_step)
        # Never words, whatever their (masked, but finite) log-probability.
        for never in (self.ids.start, self.ids.pad, self.ids.unk):
            banned |= tf.equal(top_ids, never)
        return banned | self._repeats_ngram(beams.sequences, t, top_ids)

    def _advance(
        self, beams: _Beams, t: tf.Tensor, top_log_probs: tf.Tensor, top_ids: tf.Tensor, state: tf.Tensor
    ) -> tuple[_Beams, tuple, tuple]:
        """One search step: the kept beams, the captions that ended, and those cut at the maximum length."""
        w = self.width
        k = tf.shape(top_ids)[2]
        candidates = tf.where(
            self._banned(beams, t, top_ids), _minus_inf(), beams.log_probs[:, :, None] + top_log_probs
        )
        best = tf.math.top_k(tf.reshape(candidates, [self.batch, w * k]), k=2 * w)  # ties: lower index first
        values, flat = best.values, best.indices
        token = tf.gather(tf.reshape(top_ids, [self.batch, w * k]), flat, batch_dims=1)
        parent = flat // k
        finite = tf.math.is_finite(values)
        ends = finite & tf.equal(token, self.ids.end)

        # An ending candidate counts only if it is among the best `width` continuations.
        ended_mask = ends[:, :w]
        ended_log_probs = values[:, :w]
        ended = (
            ended_mask,
            tf.gather(beams.sequences, parent[:, :w], batch_dims=1),
            tf.fill([self.batch, w], t),
            ended_log_probs,
            ended_log_probs / self._length_norm(t + 1),
        )

        # The best `width` candidates that do not end, in rank order, fill the slots.
        rank = tf.range(2 * w)
        kept = tf.math.top_k(tf.where(finite & ~ends, 2 * w - rank, 0), k=w)
        valid = kept.values > 0
        kept_parent = tf.gather(parent, kept.indices, batch_dims=1)
        kept_token = tf.where(valid, tf.gather(token, kept.indices, batch_dims=1), self.ids.pad)
        kept_log_probs = tf.where(valid, tf.gather(values, kept.indices, batch_dims=1), _NEG_INF)
        kept_sequences = self._write(tf.gather(beams.sequences, kept_parent, batch_dims=1), t, kept_token)
        at_max_length = t + 1 >= self.max_length
        cut = (
            tf.math.is_finite(kept_log_probs) & at_max_length,
            kept_sequences,
            tf.fill([self.batch, w], t + 1),
            kept_log_probs,
            kept_log_probs / self._length_norm(t + 1),
        )
        searched = _Beams(
            tokens=kept_token,
            state=tf.gather(state, kept_parent, batch_dims=1),
            sequences=kept_sequences,
            log_probs=tf.where(at_max_length, _minus_inf(), kept_log_probs),
        )
        return searched, ended, cut

    def _put(self, pool: _Pool, block: tf.Tensor, rows: tf.Tensor, finished: tuple) -> _Pool:
        mask, sequences, lengths, log_probs, scores = finished
        mask &= rows[:, None]
        at = tf.equal(tf.range(self.length_limit + 1), block)[None, :, None] & mask[:, None, :]  # [N, B, W]

        def put(old: tf.Tensor, new: tf.Tensor) -> tf.Tensor:
            return tf.where(_rows(at, old), tf.expand_dims(new, 1), old)

        return _Pool(
            ids=put(pool.ids, sequences),
            lengths=put(pool.lengths, lengths),
            log_probs=put(pool.log_probs, log_probs),
            scores=put(pool.scores, scores),
            count=pool.count + tf.reduce_sum(tf.cast(mask, tf.int32), axis=1),
        )

    def _done(self, beams: _Beams, pool: _Pool) -> tf.Tensor:
        """[N]: no live beam left, or none that could still beat the n best finished captions."""
        live = tf.reduce_any(tf.math.is_finite(beams.log_probs), axis=1)
        scores = tf.reshape(pool.scores, [self.batch, -1])
        nth_best = tf.math.top_k(scores, k=self.n_best).values[:, -1]
        # Log-probabilities only fall as a caption grows: a live beam's best possible score is its current
        # log-probability spread over the longest length it may reach.
        best_possible = tf.reduce_max(beams.log_probs, axis=1) / self._length_norm(self.max_length)
        return ~live | ((pool.count >= self.n_best) & (best_possible <= nth_best))

    def run(self, prefix_ids: tf.Tensor, prefix_lengths: tf.Tensor) -> _Pool:
        """Steps until every image is done; `prefix_ids` [N, length_limit] are forced while they last."""
        prefix_lengths = tf.minimum(prefix_lengths, self.max_length - 1)
        rows = self.batch * self.width

        def body(t: tf.Tensor, beams: _Beams, pool: _Pool, active: tf.Tensor):
            top_log_probs, top_ids, state = self.step(
                tf.reshape(beams.tokens, [rows]),
                tf.reshape(beams.state, [rows, self.state_size]),
                self.beam_context,
                2 * self.width,
            )
            k = tf.shape(top_ids)[1]
            top_log_probs = tf.cast(tf.reshape(top_log_probs, [self.batch, self.width, k]), tf.float64)
            top_ids = tf.reshape(top_ids, [self.batch, self.width, k])
            state = tf.reshape(state, [self.batch, self.width, self.state_size])

            forced_rows = active & (t < prefix_lengths)
            search_rows = active & ~forced_rows
            # While the prefix lasts, every live beam takes its next token regardless of the model.
            forced_tokens = tf.broadcast_to(
                tf.gather(prefix_ids, tf.minimum(t, self.length_limit - 1), axis=1)[:, None], tf.shape(beams.tokens)
            )
            forced = _Beams(forced_tokens, state, self._write(beams.sequences, t, forced_tokens), beams.log_probs)
            searched, ended, cut = self._advance(beams, t, top_log_probs, top_ids, state)

            beams = _Beams(
                *(
                    _where(forced_rows, f, _where(search_rows, s, old))
                    for f, s, old in zip(forced, searched, beams, strict=True)
                )
            )
            pool = self._put(pool, t, search_rows, ended)
            pool = self._put(pool, t + 1, search_rows, cut)  # only at the last step, block max_length
            return t + 1, beams, pool, active & ~self._done(beams, pool)

        def running(t: tf.Tensor, beams: _Beams, pool: _Pool, active: tf.Tensor) -> tf.Tensor:
            return (t < self.max_length) & tf.reduce_any(active)

        beams, pool = self.initial()
        active = tf.ones([self.batch], tf.bool)
        _, _, pool, _ = tf.while_loop(
            running, body, (tf.constant(0), beams, pool, active), maximum_iterations=self.length_limit
        )
        return pool

    def results(self, pool: _Pool) -> dict[str, tf.Tensor]:
        """The n best finished captions of each image, best first (stable: earlier finished first on ties)."""
        entries = (self.length_limit + 1) * self.width
        best = tf.math.top_k(tf.reshape(pool.scores, [self.batch, entries]), k=self.n_best)
        found = tf.math.is_finite(best.values)

        def pick(values: tf.Tensor) -> tf.Tensor:
            flat = tf.reshape(values, tf.concat([[self.batch, entries], tf.shape(values)[3:]], axis=0))
            return tf.gather(flat, best.indices, batch_dims=1)

        lengths = tf.where(found, pick(pool.lengths), 0)
        ids = pick(pool.ids)[:, :, : self.max_length]
        ids = tf.where(tf.range(self.max_length)[None, None, :] < lengths[:, :, None], ids, self.ids.pad)
        return {
            "ids": ids,
            "lengths": lengths,
            "log_probs": tf.cast(tf.where(found, pick(pool.log_probs), _NEG_INF), tf.float32),
            "scores": tf.cast(best.values, tf.float32),
        }


def check_search_settings(settings: SearchInputs) -> list[tf.Operation]:
    widths = f"beam_width must be between 1 and {GENERATE_MAX_BEAM_WIDTH}"
    n_best = "n_best must be between 1 and beam_width"
    return [
        tf.debugging.assert_greater_equal(settings.beam_width, 1, message=widths),
        tf.debugging.assert_less_equal(settings.beam_width, GENERATE_MAX_BEAM_WIDTH, message=widths),
        tf.debugging.assert_greater_equal(settings.n_best, 1, message=n_best),
        tf.debugging.assert_less_equal(settings.n_best, settings.beam_width, message=n_best),
        tf.debugging.assert_greater_equal(settings.max_length, 1, message="max_length must be positive"),
    ]


def beam_search(
    step: StepFunction,
    context: tf.Tensor,
    prefix_ids: tf.Tensor,
    prefix_lengths: tf.Tensor,
    settings: SearchInputs,
    ids: SpecialIds,
    state_size: int,
    length_limit: int,
) -> dict[str, tf.Tensor]:
    """Beam search for each context row [N, ...]; `prefix_ids` [N, P ≤ length_limit] are forced first.

    Returns `ids` int32 [N, n_best, max_length] (`<pad>` after each caption), `lengths` int32,
    `log_probs` and `scores` float32 [N, n_best]; a slot without a caption has length 0 and score -inf.
    """
    with tf.control_dependencies(check_search_settings(settings)):
        settings = SearchInputs(**{name: tf.identity(value) for name, value in vars(settings).items()})
    search = _InGraphBeamSearch(step, context, settings, ids, state_size, length_limit)
    padding = length_limit - tf.shape(prefix_ids)[1]
    prefix_ids = tf.pad(prefix_ids, [[0, 0], [0, padding]])
    return search.results(search.run(prefix_ids, prefix_lengths))


def _char_class(chars: set[str]) -> str:
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


def ids_to_text(ids: tf.Tensor, lengths: tf.Tensor, vocabulary: tf.Tensor, contract: ModelContract) -> tf.Tensor:
    """ids [M, L] and lengths [M] → caption text [M], one line a box, as memefly/text.py writes it.

    Up to the first `<end>`, `<sep>` starts a box, other special tokens are dropped, empty boxes
    vanish, and words are joined with spaces except around punctuation (`join_tokens`).
    """
    valid = tf.range(tf.shape(ids)[1])[None, :] < lengths[:, None]
    valid &= tf.cumsum(tf.cast(valid & tf.equal(ids, contract.end_id), tf.int32), axis=1) == 0
    is_word = valid & (ids >= len(contract.special_tokens))
    box = tf.cumsum(tf.cast(valid & tf.equal(ids, contract.sep_id), tf.int32), axis=1)
    words = tf.ragged.boolean_mask(tf.gather(vocabulary, ids), is_word)
    boxes = tf.ragged.boolean_mask(box, is_word).flat_values
    flat_words = words.flat_values
    first = tf.equal(tf.ragged.range(words.row_lengths()).flat_values, 0)
    previous_word = tf.roll(flat_words, 1, axis=0)
    new_box = ~first & tf.not_equal(boxes, tf.roll(boxes, 1, axis=0))
    glue = tf.strings.regex_full_match(
        tf.strings.substr(flat_words, 0, 1, unit="UTF8_CHAR"), _char_class(NO_SPACE_BEFORE)
    ) | tf.strings.regex_full_match(
        tf.strings.substr(previous_word, -1, 1, unit="UTF8_CHAR"), _char_class(NO_SPACE_AFTER)
    )
    joiner = tf.where(first, "", tf.where(new_box, BOX_SEPARATOR_TEXT, tf.where(glue, "", " ")))
    return tf.strings.reduce_join(words.with_flat_values(joiner + flat_words), axis=1)
