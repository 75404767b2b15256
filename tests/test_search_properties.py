"""Properties of beam search and sampling that hold for every model and every setting (hypothesis).

The "model" is a random bigram table over a small vocabulary, drawn by hypothesis with everything else;
the search sees only its top-k per step, exactly as it sees `decode_step`'s.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.search import BeamSearch, Hypothesis, Sampling, SamplingSettings, SearchSettings

PAD, START, END, UNK, SEP = 0, 1, 2, 3, 4
FIRST_WORD = 5


def bigram_table(seed: int, vocab: int, peaked: float) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(vocab, vocab)) * peaked
    logits[:, [PAD, START]] = -1e9  # masked in-graph, as the exported model does
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def run(search: BeamSearch | Sampling, table: np.ndarray) -> list[Hypothesis]:
    while not search.done:
        log_probs = table[search.tokens]
        ids = np.argsort(-log_probs, axis=1, kind="stable")[:, : search.k].astype(np.int32)
        search.advance(np.take_along_axis(log_probs, ids, axis=1), ids, search.state + 1)
    return search.results()


models = st.tuples(st.integers(0, 2**32 - 1), st.integers(FIRST_WORD + 2, 40), st.sampled_from([0.5, 2.0, 5.0]))
beam_settings = st.builds(
    lambda width, n_best, max_length, penalty, ngram: SearchSettings(
        beam_width=width,
        n_best=min(n_best, width),
        max_length=max_length,
        length_penalty=penalty,
        no_repeat_ngram_size=ngram,
    ),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 12),
    st.sampled_from([0.0, 0.7, 1.0, 2.0]),
    st.integers(0, 3),
)


def prefixes(vocab: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(FIRST_WORD, vocab - 1), max_size=3).map(tuple)


def expected_log_prob(table: np.ndarray, ids: tuple[int, ...], forced: int, max_length: int) -> float:
    """Sum of the model's log-probabilities of every chosen (not forced) token, `<end>` included."""
    tokens = (START, *ids)
    total = sum(table[tokens[i], tokens[i + 1]] for i in range(forced, len(ids)))
    if len(ids) < max_length:
        total += table[ids[-1] if ids else START, END]
    return float(total)


def assert_obeys_caption_rules(ids: tuple[int, ...], prefix: tuple[int, ...], ngram: int, max_length: int) -> None:
    assert 1 <= len(ids) <= max_length
    assert ids[: len(prefix)] == prefix
    generated = ids[len(prefix) :]
    assert not {PAD, START, END, UNK} & set(generated)
    for i, token in enumerate(ids):
        if token == SEP and i >= len(prefix):
            assert i > 0 and ids[i - 1] != SEP and i < len(ids) - 1, f"empty box in {ids}"
    if ngram:
        for end in range(max(len(prefix), ngram - 1), len(ids)):
            gram = ids[end - ngram + 1 : end + 1]
            earlier = {ids[j : j + ngram] for j in range(end - ngram + 1)}
            assert gram not in earlier, f"{gram} repeated in {ids}"


@settings(max_examples=400, deadline=None, derandomize=True)
@given(model=models, search_settings=beam_settings, data=st.data())
def test_beam_search_returns_distinct_captions_sorted_by_a_score_that_matches_the_model(
    model: tuple[int, int, float], search_settings: SearchSettings, data: st.DataObject
) -> None:
    table = bigram_table(*model)
    prefix = data.draw(prefixes(table.shape[0]))
    search = BeamSearch(search_settings, START, END, SEP, state_size=2, unk_id=UNK, prefix=prefix, pad_id=PAD)
    results = run(search, table)
    forced = prefix[: search_settings.max_length - 1]

    assert len(results) <= search_settings.n_best
    assert len({h.ids for h in results}) == len(results), "n-best captions are distinct"
    scores = [h.score for h in results]
    assert scores == sorted(scores, reverse=True), "best first"
    for h in results:
        assert_obeys_caption_rules(h.ids, forced, search_settings.no_repeat_ngram_size, search_settings.max_length)
        log_prob = expected_log_prob(table, h.ids, len(forced), search_settings.max_length)
        assert np.isclose(h.log_prob, log_prob, atol=1e-6)
        ended = len(h.ids) < search_settings.max_length
        assert np.isclose(h.score, log_prob / (len(h.ids) + ended) ** search_settings.length_penalty, atol=1e-6)


sampling_settings = st.builds(
    lambda n, temperature, top_p, k, max_length, seed: SamplingSettings(
        n=n, temperature=temperature, top_p=top_p, k=k, max_length=max_length, seed=seed
    ),
    st.integers(1, 6),
    st.sampled_from([0.3, 1.0, 1.7]),
    st.sampled_from([0.3, 0.9, 1.0]),
    st.integers(1, 16),
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(model=models, sampling=sampling_settings, data=st.data())
def test_sampling_with_a_seed_is_reproducible_and_obeys_the_caption_rules(
    model: tuple[int, int, float], sampling: SamplingSettings, data: st.DataObject
) -> None:
    table = bigram_table(*model)
    prefix = data.draw(prefixes(table.shape[0]))
    first = run(Sampling(sampling, START, END, SEP, 2, unk_id=UNK, prefix=prefix, pad_id=PAD), table)
    again = run(Sampling(sampling, START, END, SEP, 2, unk_id=UNK, prefix=prefix, pad_id=PAD), table)
    assert first == again
    assert len(first) <= sampling.n
    assert len({h.ids for h in first}) == len(first)
    forced = prefix[: sampling.max_length - 1]
    for h in first:
        assert_obeys_caption_rules(h.ids, forced, sampling.no_repeat_ngram_size, sampling.max_length)
        # A sample whose every candidate is banned (k small) ends where it is, without `<end>`.
        ended_or_stuck = {
            expected_log_prob(table, h.ids, len(forced), max_length) for max_length in (sampling.max_length, len(h.ids))
        }
        assert any(np.isclose(h.log_prob, log_prob, atol=1e-6) for log_prob in ended_or_stuck)
