"""Beam search over a step function the caller runs: NumPy in, NumPy out, no I/O.

`BeamSearch` holds the live beams of one request. The caller asks it for the next step's inputs,
runs `decode_step` however it likes (in-process, over gRPC, batched with other requests) and hands
the top-k result back to `advance`. Keeping transport out of here is what lets the same search run on
every backend and be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SearchSettings:
    beam_width: int = 4
    n_best: int = 3
    max_length: int = 24
    length_penalty: float = 1.0
    """Scores are log P / length ** length_penalty: 0 favours short captions, larger favours long."""
    no_repeat_ngram_size: int = 3
    """No n-gram of this size appears twice in a caption (0 turns the rule off)."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_best <= self.beam_width:
            raise ValueError("n_best must be between 1 and beam_width")
        if self.max_length < 1:
            raise ValueError("max_length must be positive")

    @property
    def k(self) -> int:
        """Candidates asked of each beam: enough to refill every beam even if half of them end."""
        return 2 * self.beam_width


@dataclass(frozen=True)
class Hypothesis:
    ids: tuple[int, ...]
    """Generated tokens, without `<start>` and `<end>`."""
    log_prob: float
    score: float


class BeamSearch:
    def __init__(self, settings: SearchSettings, start_id: int, end_id: int, sep_id: int, state_size: int) -> None:
        self.settings = settings
        self.end_id = end_id
        self.sep_id = sep_id
        self.tokens = np.array([start_id], np.int32)
        self.state = np.zeros((1, state_size), np.float32)
        self.sequences = np.zeros((1, 0), np.int32)
        self.log_probs = np.zeros(1, np.float64)
        self.finished: list[Hypothesis] = []
        self.steps = 0

    @property
    def num_live(self) -> int:
        return len(self.tokens)

    @property
    def done(self) -> bool:
        """No live beam left, or none that could still beat the n best finished captions."""
        if self.num_live == 0:
            return True
        if len(self.finished) < self.settings.n_best:
            return False
        nth_best = sorted((h.score for h in self.finished), reverse=True)[self.settings.n_best - 1]
        # Log-probabilities only fall as a caption grows, so a live beam's best possible score is its
        # current log-probability spread over the longest length it may reach.
        best_possible = self.log_probs.max() / self.settings.max_length**self.settings.length_penalty
        return best_possible <= nth_best

    def _score(self, log_prob: float, length: int) -> float:
        return log_prob / max(length, 1) ** self.settings.length_penalty

    def _finish(self, ids: np.ndarray, log_prob: float, length: int) -> None:
        self.finished.append(Hypothesis(tuple(int(i) for i in ids), log_prob, self._score(log_prob, length)))

    def _repeats_ngram(self, ids: np.ndarray) -> np.ndarray:
        """[live, k] mask of candidates that would complete an n-gram the beam already holds."""
        n = self.settings.no_repeat_ngram_size
        repeats = np.zeros(ids.shape, bool)
        length = self.sequences.shape[1]
        if n <= 0 or length < n:
            return repeats
        for beam, sequence in enumerate(self.sequences):
            if n == 1:
                seen = set(sequence.tolist())
            else:
                windows = np.lib.stride_tricks.sliding_window_view(sequence, n)
                prefix = sequence[length - n + 1 :]
                seen = set(windows[(windows[:, :-1] == prefix).all(axis=1), -1].tolist())
            repeats[beam] = np.isin(ids[beam], list(seen))
        return repeats

    def advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray, state: np.ndarray) -> None:
        """Take one `decode_step` result ([live, k] log-probs and ids, [live, S] state)."""
        width = self.settings.beam_width
        k = top_ids.shape[1]
        candidates = (self.log_probs[:, None] + top_log_probs).reshape(-1)
        ids = top_ids.reshape(-1)
        # Every text box holds words: no `<sep>` or `<end>` first or right after a `<sep>`, and no
        # `<sep>` as the last token a caption can have.
        after_word = np.repeat(self.tokens != self.sep_id, k) if self.steps else np.zeros(ids.size, bool)
        boundary = (ids == self.end_id) | (ids == self.sep_id)
        last_step = self.steps + 1 >= self.settings.max_length
        banned = (boundary & ~after_word) | ((ids == self.sep_id) & last_step)
        banned |= self._repeats_ngram(ids.reshape(-1, k)).reshape(-1)
        candidates = np.where(banned, -np.inf, candidates)
        ranked = np.argsort(-candidates, kind="stable")[: 2 * width]
        ranked = ranked[np.isfinite(candidates[ranked])]
        ends = ids[ranked] == self.end_id
        # An ending candidate counts only if it would have been among the best `width` continuations.
        for rank in np.flatnonzero(ends[:width]):
            flat = ranked[rank]
            self._finish(self.sequences[flat // k], float(candidates[flat]), self.steps + 1)
        keep = ranked[~ends][:width]
        beams = keep // k
        self.sequences = np.concatenate([self.sequences[beams], ids[keep, None]], axis=1)
        self.tokens = ids[keep].astype(np.int32)
        self.state = state[beams]
        self.log_probs = candidates[keep]
        self.steps += 1
        if self.steps >= self.settings.max_length:
            for sequence, log_prob in zip(self.sequences, self.log_probs, strict=True):
                self._finish(sequence, float(log_prob), self.steps)
            self.tokens = self.tokens[:0]

    def results(self) -> list[Hypothesis]:
        """The n best distinct finished hypotheses, best first."""
        best: dict[tuple[int, ...], Hypothesis] = {}
        for hypothesis in sorted(self.finished, key=lambda h: -h.score):
            best.setdefault(hypothesis.ids, hypothesis)
        return list(best.values())[: self.settings.n_best]
