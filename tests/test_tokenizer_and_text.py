"""The one tokenizer (TensorFlow ops) and the gateway's join of ids back into text boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export.data import Caption, split_by_template
from export.tokenizer import Tokenizer, build_vocabulary, caption_text, split_words, write_vocabulary
from memefly.contract import SPECIAL_TOKENS, ModelContract
from memefly.text import ids_to_boxes, join_tokens


def words(text: str) -> list[str]:
    return [w.decode() for w in split_words(tf.constant([text])).to_list()[0]]


def test_words_are_lower_cased_and_punctuation_is_split_off() -> None:
    assert words("WHAT'S A TREE?!") == ["what's", "a", "tree", "?", "!"]
    assert words("Ça VA, Élodie") == ["ça", "va", ",", "élodie"]
    assert words("\"quoted\" 'single' don't") == ["quoted", "single", "don't"]


def test_boxes_are_joined_by_the_separator_token() -> None:
    assert words(caption_text(["ONE DOES NOT SIMPLY", "WALK INTO MORDOR"])) == [
        "one", "does", "not", "simply", "<sep>", "walk", "into", "mordor",
    ]  # fmt: skip
    assert caption_text(["a\nb", "c"]) == "a b\nc"


def test_vocabulary_has_special_tokens_first_then_by_count(tmp_path: Path) -> None:
    vocabulary = build_vocabulary(["b a a", "c a b", "d"], max_size=8, min_count=2)
    assert vocabulary == [*SPECIAL_TOKENS, "a", "b"]
    assert build_vocabulary(["b a a", "c a b", "d"], max_size=6, min_count=1) == [*SPECIAL_TOKENS, "a"]


def test_tokenizer_maps_unknown_words_and_pads(tmp_path: Path) -> None:
    vocabulary = [*SPECIAL_TOKENS, "a", "b", "?"]
    path = tmp_path / "vocabulary.txt"
    write_vocabulary(vocabulary, str(path))
    tokenizer = Tokenizer(str(path), max_length=4)
    ids, lengths = tokenizer(tf.constant(["A b?", "b zebra\na a a a", ""]))
    assert lengths.numpy().tolist() == [3, 4, 0]
    assert ids.numpy().tolist() == [[5, 6, 7, 0], [6, 3, 4, 5], [0, 0, 0, 0]]
    assert [w.decode() for w in tokenizer.vocabulary().numpy()] == vocabulary


def test_ids_round_trip_to_boxes_with_punctuation_attached() -> None:
    vocabulary = [*SPECIAL_TOKENS, "when", "you", "?", "finally", "(", "really", ")", "!"]
    contract = ModelContract("m", "gru", "tiny", len(vocabulary), 8, 224, 4, (3,))
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = [index[w] for w in ["when", "you", "?", "<sep>", "finally", "(", "really", ")", "!", "<end>", "you"]]
    assert ids_to_boxes(ids, vocabulary, contract) == ["when you?", "finally (really)!"]
    assert join_tokens([]) == ""


def test_split_is_stratified_by_template_and_reproducible() -> None:
    captions = [Caption(t, (f"{t} {i}",)) for t in "abc" for i in range(20)] + [Caption("lonely", ("x",))]
    train, validation = split_by_template(captions, 0.1, seed=7)
    assert sorted(train + validation, key=str) == sorted(captions, key=str)
    assert {c.template for c in validation} == {"a", "b", "c"}
    assert all(sum(c.template == t for c in validation) == 2 for t in "abc")
    assert split_by_template(captions, 0.1, seed=7) == (train, validation)
    assert Caption("lonely", ("x",)) in train


def test_data_dir_missing_gives_a_clear_error(tmp_path: Path) -> None:
    from export.data import DataMissingError, data_dir

    with pytest.raises(DataMissingError, match="MEMEFLY_DATA_DIR"):
        data_dir(tmp_path)


def test_real_data_set_reads(data_folder: Path) -> None:
    from export.data import iter_captions, load_templates

    templates = load_templates(data_folder)
    assert len(templates) == 200
    assert all(t.image_path.is_file() for t in templates[:5])
    first = list(zip(range(100), iter_captions(data_folder), strict=False))
    assert all(c.boxes and all(b.strip() for b in c.boxes) for _, c in first)
    assert np.mean([len(c.boxes) for _, c in first]) >= 1
