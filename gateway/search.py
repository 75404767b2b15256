"""Beam search and sampling over a step function the caller runs: NumPy in, NumPy out, no I/O.

`BeamSearch` (or `Sampling`) holds the live beams of one request. The caller asks it for the next step's inputs,
runs `decode_step` however it likes (in-process, over gRPC, batched with other requests) and hands
the top-k result back to `advance`. Keeping transport out of here is what lets the same search run on
every backend and be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np

from memefly.contract import ModelContract


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
class SamplingSettings:
    """`n` captions drawn independently: temperature, then nucleus (top-p) within the top `k`."""

    n: int = 3
    temperature: float = 1.0
    top_p: float = 0.9
    k: int = 64
    """Candidates each step returns: the nucleus is cut from these, so no full softmax crosses the wire."""
    max_length: int = 24
    no_repeat_ngram_size: int = 3
    seed: int | None = None
    length_penalty: float = 1.0
    """Only orders the finished samples."""
    rerank: int = 1
    """Samples drawn per caption wanted: the `Captioner` keeps the `n` most specific to the image
    (`gateway/rerank.py`). `Sampling` itself draws `n` and ignores this."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.k < 1 or self.max_length < 1 or self.rerank < 1:
            raise ValueError("n, k, max_length and rerank must be positive")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError("top_p must be in (0, 1] and temperature positive")


@dataclass(frozen=True)
class Hypothesis:
    ids: tuple[int, ...]
    """Generated tokens, without `<start>` and `<end>`."""
    log_prob: float
    score: float


class _LiveBeams:
    """Live beams of one request and the rules every caption obeys, whatever picks the tokens."""

    settings: SearchSettings | SamplingSettings

    def __init__(
        self,
        start_id: int,
        end_id: int,
        sep_id: int,
        state_size: int,
        beams: int,
        unk_id: int | None,
        prefix: tuple[int, ...] = (),
        pad_id: int | None = None,
    ) -> None:
        self.prefix = tuple(prefix)[: self.settings.max_length - 1]
        self.end_id = end_id
        self.sep_id = sep_id
        self.unk_id = unk_id
        # Never words, whatever their (masked, but finite) log-probability: when every other candidate
        # is banned, a beam must end or die rather than take one.
        self.never_ids = tuple(i for i in (start_id, pad_id, unk_id) if i is not None)
        self.tokens = np.full(beams, start_id, np.int32)
        self.state = np.zeros((beams, state_size), np.float32)
        self.sequences = np.zeros((beams, 0), np.int32)
        self.log_probs = np.zeros(beams, np.float64)
        self.finished: list[Hypothesis] = []
        self.steps = 0

    @classmethod
    def for_contract(
        cls, settings: SearchSettings | SamplingSettings, contract: ModelContract, prefix: tuple[int, ...] = ()
    ) -> Self:
        """This search (BeamSearch or Sampling) with the contract's special-token ids and state size."""
        c = contract
        return cls(settings, c.start_id, c.end_id, c.sep_id, c.state_size, c.unk_id, prefix=prefix, pad_id=c.pad_id)

    @property
    def num_live(self) -> int:
        return len(self.tokens)

    @property
    def k(self) -> int:
        return self.settings.k

    def _score(self, log_prob: float, length: int) -> float:
        return log_prob / max(length, 1) ** self.settings.length_penalty

    def _finish(self, ids: np.ndarray, log_prob: float, length: int) -> None:
        self.finished.append(Hypothesis(tuple(ids.tolist()), log_prob, self._score(log_prob, length)))

    def _repeats_ngram(self, ids: np.ndarray) -> np.ndarray:
        """[live, k] mask of candidates that would complete an n-gram the beam already holds."""
        n = self.settings.no_repeat_ngram_size
        sequences = self.sequences
        length = sequences.shape[1]
        if n <= 0 or length < n:
            return np.zeros(ids.shape, bool)
        # Window i (tokens i .. i + n - 1) bans its last token when its first n - 1 tokens are the
        # beam's last n - 1, which start at column `windows`. For n = 1 every token so far is banned.
        windows = length - n + 1
        follows = np.ones((len(sequences), windows), bool)
        for offset in range(n - 1):
            follows &= sequences[:, offset : offset + windows] == sequences[:, windows + offset, None]
        if not follows.any():  # the usual case: the beam's last n - 1 tokens are new
            return np.zeros(ids.shape, bool)
        # [live, windows, k], reduced over the middle axis, where NumPy ORs whole rows of k at once.
        next_tokens = sequences[:, n - 1 :]
        return ((ids[:, None, :] == next_tokens[:, :, None]) & follows[:, :, None]).any(axis=1)

    def _banned(self, top_ids: np.ndarray) -> np.ndarray:
        """[live, k] mask of candidates no caption may take."""
        # Every text box holds words: no `<sep>` or `<end>` first or right after a `<sep>`, and no
        # `<sep>` as the last token a caption can have.
        is_sep = top_ids == self.sep_id
        banned = is_sep | (top_ids == self.end_id)
        if self.steps:
            banned &= (self.tokens == self.sep_id)[:, None]
        if self.steps + 1 >= self.settings.max_length:
            banned |= is_sep
        for never in self.never_ids:
            banned |= top_ids == never
        banned |= self._repeats_ngram(top_ids)
        return banned

    def _finish_at_max_length(self) -> None:
        if self.steps >= self.settings.max_length:
            for sequence, log_prob in zip(self.sequences, self.log_probs, strict=True):
                self._finish(sequence, float(log_prob), self.steps)
            self._keep(np.zeros(0, np.int64), np.zeros(0, np.int32), self.state[:0], self.log_probs[:0])

    def _force_prefix(self, state: np.ndarray) -> bool:
        """While the caller's prefix lasts, every beam takes its next token regardless of the model."""
        if self.steps >= len(self.prefix):
            return False
        rows = np.arange(self.num_live)
        self._keep(rows, np.full(self.num_live, self.prefix[self.steps], np.int32), state, self.log_probs)
        self.steps += 1
        return True

    def _keep(self, beams: np.ndarray, tokens: np.ndarray, state: np.ndarray, log_probs: np.ndarray) -> None:
        self.sequences = np.concatenate([self.sequences[beams], tokens[:, None]], axis=1)
        self.tokens = tokens.astype(np.int32)
        self.state = state
        self.log_probs = log_probs

    def results(self) -> list[Hypothesis]:
        """The best distinct finished captions, best first."""
        best: dict[tuple[int, ...], Hypothesis] = {}
        for hypothesis in sorted(self.finished, key=lambda h: -h.score):
            best.setdefault(hypothesis.ids, hypothesis)
        return list(best.values())[: self._results_wanted]

    @property
    def _results_wanted(self) -> int:
        raise NotImplementedError


class BeamSearch(_LiveBeams):
    def __init__(
        self,
        settings: SearchSettings,
        start_id: int,
        end_id: int,
        sep_id: int,
        state_size: int,
        unk_id: int | None = None,
        prefix: tuple[int, ...] = (),
        pad_id: int | None = None,
    ) -> None:
        self.settings = settings
        super().__init__(start_id, end_id, sep_id, state_size, beams=1, unk_id=unk_id, prefix=prefix, pad_id=pad_id)

    @property
    def _results_wanted(self) -> int:
        return self.settings.n_best

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

    def advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray, state: np.ndarray) -> None:
        """Take one `decode_step` result ([live, k] log-probs and ids, [live, S] state)."""
        if self._force_prefix(state):
            return
        width = self.settings.beam_width
        k = top_ids.shape[1]
        candidates = np.where(self._banned(top_ids), -np.inf, self.log_probs[:, None] + top_log_probs).reshape(-1)
        ids = top_ids.reshape(-1)
        ranked = np.argsort(-candidates, kind="stable")[: 2 * width]
        ranked = ranked[np.isfinite(candidates[ranked])]
        ends = ids[ranked] == self.end_id
        # An ending candidate counts only if it would have been among the best `width` continuations.
        for rank in np.flatnonzero(ends[:width]):
            flat = ranked[rank]
            self._finish(self.sequences[flat // k], float(candidates[flat]), self.steps + 1)
        keep = ranked[~ends][:width]
        beams = keep // k
        self._keep(beams, ids[keep], state[beams], candidates[keep])
        self.steps += 1
        self._finish_at_max_length()


class Sampling(_LiveBeams):
    """`n` independent samples of one request, reproducible with a seed."""

    def __init__(
        self,
        settings: SamplingSettings,
        start_id: int,
        end_id: int,
        sep_id: int,
        state_size: int,
        unk_id: int | None = None,
        prefix: tuple[int, ...] = (),
        pad_id: int | None = None,
    ) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        super().__init__(
            start_id, end_id, sep_id, state_size, beams=settings.n, unk_id=unk_id, prefix=prefix, pad_id=pad_id
        )

    @property
    def _results_wanted(self) -> int:
        return self.settings.n

    @property
    def done(self) -> bool:
        return self.num_live == 0

    def advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray, state: np.ndarray) -> None:
        if self._force_prefix(state):
            return
        logits = np.where(self._banned(top_ids), -np.inf, top_log_probs / self.settings.temperature)
        stuck = ~np.isfinite(logits).any(axis=1)
        if stuck.any():
            # No allowed continuation: such a sample ends where it is (or is dropped when empty).
            for row in np.flatnonzero(stuck & (self.sequences.shape[1] > 0)):
                if self.sequences[row, -1] != self.sep_id:  # ending on `<sep>` would leave an empty box
                    self._finish(self.sequences[row], float(self.log_probs[row]), self.steps)
            logits[stuck] = 0.0
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        # Nucleus: the fewest most likely candidates whose mass reaches top_p.
        rows = np.arange(len(probs))
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = probs[rows[:, None], order]
        outside = np.cumsum(sorted_probs, axis=1) - sorted_probs >= self.settings.top_p
        sorted_probs[outside] = 0.0
        probs[rows[:, None], order] = sorted_probs  # `order` is a permutation: every entry is rewritten
        probs /= probs.sum(axis=1, keepdims=True)
        picks = (probs.cumsum(axis=1) < self.rng.random((len(probs), 1))).sum(axis=1)
        picks = np.minimum(picks, probs.shape[1] - 1)
        tokens = top_ids[rows, picks]
        log_probs = self.log_probs + top_log_probs[rows, picks]
        ended = (tokens == self.end_id) & ~stuck
        for row in np.flatnonzero(ended):
            self._finish(self.sequences[row], float(log_probs[row]), self.steps + 1)
        live = np.flatnonzero(~(ended | stuck))
        self._keep(live, tokens[live], state[live], log_probs[live])
        self.steps += 1
        self._finish_at_max_length()
