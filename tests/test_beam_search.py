"""Beam search on its own, against a small Markov 'model' whose best captions can be enumerated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gateway.search import BeamSearch, Sampling, SamplingSettings, SearchSettings

START, END, SEP = 1, 2, 4
WORDS = [5, 6, 7]
VOCAB = 8


def markov_table(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(VOCAB, VOCAB)) * 2
    logits[:, [0, START, 3]] = -1e9  # never proposed, as the exported model masks them
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def run(search: BeamSearch | Sampling, table: np.ndarray) -> int:
    calls = 0
    width = search.settings.beam_width if isinstance(search, BeamSearch) else search.settings.n
    while not search.done:
        log_probs = table[search.tokens]
        k = search.k
        ids = np.argsort(-log_probs, axis=1, kind="stable")[:, :k].astype(np.int32)
        search.advance(np.take_along_axis(log_probs, ids, axis=1), ids, search.state + 1)
        calls += 1
        assert search.num_live <= width
    return calls


def valid(sequence: tuple[int, ...]) -> bool:
    """Boxes hold words: no separator first, last or twice in a row."""
    return (
        bool(sequence)
        and sequence[0] != SEP
        and sequence[-1] != SEP
        and (SEP, SEP) not in zip(sequence, sequence[1:], strict=False)
    )


def exhaustive_best(table: np.ndarray, max_length: int, length_penalty: float) -> tuple[int, ...]:
    best, best_score = (), -np.inf
    for length in range(1, max_length + 1):
        for sequence in itertools.product([*WORDS, SEP], repeat=length):
            if not valid(sequence):
                continue
            tokens = (START, *sequence)
            log_prob = sum(table[a, b] for a, b in zip(tokens, tokens[1:], strict=False))
            ended = length < max_length
            if ended:
                log_prob += table[sequence[-1], END]
            score = log_prob / (length + ended) ** length_penalty
            if score > best_score:
                best, best_score = sequence, score
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_best(seed: int, length_penalty: float) -> None:
    table = markov_table(seed)
    settings = SearchSettings(beam_width=64, n_best=3, max_length=4, length_penalty=length_penalty)
    search = BeamSearch(settings, START, END, SEP, state_size=2)
    run(search, table)
    assert search.results()[0].ids == exhaustive_best(table, 4, length_penalty)


@pytest.mark.parametrize("seed", range(4))
def test_results_are_sorted_distinct_valid_and_at_most_n_best(seed: int) -> None:
    settings = SearchSettings(beam_width=3, n_best=3, max_length=6)
    search = BeamSearch(settings, START, END, SEP, state_size=2)
    calls = run(search, markov_table(seed))
    results = search.results()
    assert 1 <= len(results) <= 3
    assert [h.score for h in results] == sorted((h.score for h in results), reverse=True)
    assert len({h.ids for h in results}) == len(results)
    assert all(valid(h.ids) and END not in h.ids for h in results)
    assert calls <= settings.max_length


def test_max_length_bounds_captions_and_steps() -> None:
    table = markov_table(0)
    table[:, END] = -1e9  # a model that never ends on its own
    settings = SearchSettings(beam_width=2, n_best=2, max_length=5)
    search = BeamSearch(settings, START, END, SEP, state_size=2)
    assert run(search, table) == 5
    assert all(len(h.ids) == 5 for h in search.results())


def test_state_follows_its_beam() -> None:
    settings = SearchSettings(beam_width=2, n_best=1, max_length=3)
    search = BeamSearch(settings, START, END, SEP, state_size=1)
    ids = np.array([[5, 6, 7, 2]], np.int32)
    search.advance(np.log([[0.4, 0.3, 0.2, 0.1]]), ids, np.array([[10.0]]))
    assert search.tokens.tolist() == [5, 6]
    ids = np.array([[7, 5, 6, 2], [5, 6, 7, 2]], np.int32)
    state = np.array([[20.0], [30.0]])
    search.advance(np.log([[0.1, 0.1, 0.1, 0.1], [0.9, 0.05, 0.03, 0.02]]), ids, state)
    assert search.sequences.tolist()[0] == [6, 5]
    assert search.state[0].tolist() == [30.0]


def test_n_best_cannot_exceed_beam_width() -> None:
    with pytest.raises(ValueError):
        SearchSettings(beam_width=2, n_best=3)


def test_no_ngram_repeats_within_a_caption() -> None:
    table = np.full((VOCAB, VOCAB), -1e9)
    table[START, 5] = table[5, 6] = table[6, 5] = 0.0  # a model that only wants "5 6 5 6 5 6 ..."
    table[:, 7] = table[:, END] = table[:, SEP] = -5.0
    settings = SearchSettings(beam_width=2, n_best=2, max_length=8, no_repeat_ngram_size=2)
    search = BeamSearch(settings, START, END, SEP, state_size=1)
    run(search, table)
    for hypothesis in search.results():
        bigrams = list(zip(hypothesis.ids, hypothesis.ids[1:], strict=False))
        assert len(bigrams) == len(set(bigrams)), hypothesis.ids
    unrestricted = BeamSearch(
        SearchSettings(beam_width=2, n_best=2, max_length=8, no_repeat_ngram_size=0), START, END, SEP, state_size=1
    )
    run(unrestricted, table)
    assert unrestricted.results()[0].ids[:4] == (5, 6, 5, 6)


def repeats_an_ngram(sequence: list[int], n: int) -> bool:
    """Whether the last n tokens of `sequence` already appear earlier in it."""
    if n <= 0 or len(sequence) < n:
        return False
    return tuple(sequence[-n:]) in {tuple(sequence[i : i + n]) for i in range(len(sequence) - n)}


@pytest.mark.parametrize("ngram", range(6))
def test_no_repeat_rule_bans_exactly_the_tokens_that_would_repeat_an_ngram(ngram: int) -> None:
    """Greedy search against a plain reference: a ban too many changes the caption as surely as one too few."""
    preferences = {START: (5, 6), 5: (6, 7), 6: (7, 5), 7: (5, 6)}  # best first; nothing else, not even `<end>`
    table = np.full((VOCAB, VOCAB), -1e9)
    for token, (best, second) in preferences.items():
        table[token, best], table[token, second] = -0.1, -1.0
    max_length = 12
    expected: list[int] = []
    while len(expected) < max_length:
        allowed = [
            c for c in preferences[expected[-1] if expected else START] if not repeats_an_ngram([*expected, c], ngram)
        ]
        if not allowed:  # the beam dies: no caption at all
            break
        expected.append(allowed[0])
    settings = SearchSettings(beam_width=1, n_best=1, max_length=max_length, no_repeat_ngram_size=ngram)
    search = BeamSearch(settings, START, END, SEP, state_size=1)
    run(search, table)
    assert [h.ids for h in search.results()] == ([tuple(expected)] if len(expected) == max_length else [])


def run_sampling(settings: SamplingSettings, table: np.ndarray) -> list[tuple[int, ...]]:
    sampling = Sampling(settings, START, END, SEP, state_size=1)
    steps = run(sampling, table)
    assert steps <= settings.max_length
    return [h.ids for h in sampling.results()]


def test_sampling_is_reproducible_with_a_seed_and_varies_without() -> None:
    table = markov_table(3)
    settings = SamplingSettings(n=4, temperature=1.5, top_p=1.0, k=VOCAB, max_length=8, seed=11)
    first = run_sampling(settings, table)
    assert first == run_sampling(settings, table)
    assert all(valid(ids) for ids in first)
    others = {
        tuple(run_sampling(SamplingSettings(n=4, temperature=1.5, top_p=1.0, k=VOCAB, seed=s), table)) for s in range(5)
    }
    assert len(others) > 1


def test_tiny_top_p_samples_the_most_likely_token_every_step() -> None:
    table = markov_table(4)
    settings = SamplingSettings(n=3, top_p=1e-6, k=VOCAB, max_length=6, seed=0, no_repeat_ngram_size=0)
    samples = run_sampling(settings, table)
    greedy, token = [], START
    for _ in range(6):
        allowed = table[token].copy()
        if not greedy:
            allowed[[END, SEP]] = -np.inf
        token = int(np.argmax(allowed))
        if token == END:
            break
        greedy.append(token)
    assert samples == [tuple(greedy)]


def test_unknown_word_token_is_never_emitted() -> None:
    unk = 3
    table = np.full((VOCAB, VOCAB), -8.0)
    table[:, unk] = -0.01  # a model that mostly predicts <unk>
    for search in (
        BeamSearch(SearchSettings(beam_width=3, n_best=3, max_length=5), START, END, SEP, 1, unk_id=unk),
        Sampling(SamplingSettings(n=3, k=VOCAB, max_length=5, seed=1), START, END, SEP, 1, unk_id=unk),
    ):
        run(search, table)
        assert search.results()
        assert all(unk not in h.ids for h in search.results())
