"""`python -m bench --quick` on the tiny model: every mode and load has a row, and the rows add up.

Nothing here is timed: the checks are that the counts the report derives agree with each other.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import MODEL_NAME

CONCURRENCIES = (1, 2)
OFFLINE_BATCH = 4


@pytest.fixture(scope="module")
def bench_report(model_base_path: Path, serving_target: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from bench.runner import BenchOptions, run

    out_dir = tmp_path_factory.mktemp("bench")
    options = BenchOptions(
        model_base_path=model_base_path,
        out_dir=out_dir,
        model_name=MODEL_NAME,
        concurrencies=CONCURRENCIES,
        rounds=1,
        min_memes=2,
        offline_batches=(OFFLINE_BATCH,),
        offline_repeats=1,
        paired_rounds=1,
        serving_target=serving_target,
        quick=True,
    )
    run(options)
    for name in ("report.md", "report.png"):
        assert (out_dir / name).stat().st_size > 0
    return json.loads((out_dir / "report.json").read_text())


def _rows(report: dict, variant: str) -> list[dict]:
    return [row for row in report["rows"] if row["variant"] == variant]


def _row_alone(report: dict, variant: str) -> dict:
    return next(row for row in _rows(report, variant) if row["concurrency"] == 1)


def test_every_mode_and_load_has_a_row(bench_report: dict) -> None:
    # Mode 1 runs twice: in-process ("1") and over the REST JSON API, as the seed deployed it ("1-rest").
    for variant in ("1", "1-rest", "2", "3", "4", "5", "7"):
        assert sorted(row["concurrency"] for row in _rows(bench_report, variant)) == list(CONCURRENCIES)
    assert [row["offline_batch"] for row in _rows(bench_report, "6")] == [OFFLINE_BATCH]
    assert {row["transport"] for row in bench_report["rows"] if row["mode"] == 1} == {"in-process", "REST JSON"}
    for row in bench_report["rows"]:
        assert row["available"] or row["mode"] == 5, row
        if not row["available"]:
            assert "not available" in row["note"]
    targets = {check["target"]: check for check in bench_report["targets"]}
    assert len(targets) == 6
    rest_target, in_process_line = (check for name, check in targets.items() if name.startswith("(1)"))
    assert "REST" in rest_target["target"] and rest_target["passed"] is not None
    assert in_process_line["op"] == "info" and in_process_line["passed"] is None
    assert rest_target["measured"] > 0 and in_process_line["measured"] > 0


def test_rows_are_consistent_counts(bench_report: dict) -> None:
    for row in bench_report["rows"]:
        if not row["available"]:
            continue
        expected = OFFLINE_BATCH if row["mode"] == 6 else max(row["concurrency"], 2)
        assert row["errors"] == 0, row["first_error"]
        assert row["memes"] == expected
        assert row["memes_per_second"] == pytest.approx(row["memes"] / row["seconds"])
        latency = row["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
        # RPCs per meme is the interceptor's (or wrapper's) count, and adds up by signature.
        assert row["rpcs_per_meme"] == pytest.approx(row["model_calls"] / row["memes"])
        assert sum(row["calls_per_meme_by_signature"].values()) == pytest.approx(row["rpcs_per_meme"])
        assert sum(row["bytes_per_meme_by_category"].values()) == pytest.approx(row["bytes_per_meme"])
        assert row["request_bytes_per_meme"] + row["response_bytes_per_meme"] == pytest.approx(row["bytes_per_meme"])
        if row["mode"] != 7:  # text to template sends text, no image
            assert row["bytes_per_meme_by_category"]["image"] > 0
        if row["concurrency"] == 1:
            # Alone, every model call counted is one the meme itself reports taking part in (the session's
            # periodic version check, GetModelStatus, belongs to no meme).
            predict_calls = {
                name: n for name, n in row["calls_per_meme_by_signature"].items() if name != "GetModelStatus"
            }
            assert sum(predict_calls.values()) == pytest.approx(row["calls_a_meme_took_part_in"])


def test_modes_differ_where_they_should(bench_report: dict) -> None:
    original, full_vocabulary, product, embedded = (_row_alone(bench_report, variant) for variant in "1234")
    # The original algorithm calls the model once per beam per step; the step loop once per step.
    assert original["rpcs_per_meme"] > product["rpcs_per_meme"] > 1
    assert original["decode_batch_mean"] == 1
    # Alone, a meme's beams are all a tick carries: its 3 captions, one style each, beams of 2.
    assert 1 < product["decode_batch_mean"] <= 3 * 2
    assert product["calls_per_meme_by_signature"]["encode"] == 1
    # Full-vocabulary results outweigh top-k results; context and state cost the same in both.
    results = lambda row: row["bytes_per_meme_by_category"]["results"]  # noqa: E731
    assert results(full_vocabulary) > 10 * results(product)
    assert product["bytes_kind"] == "serialized" and embedded["bytes_kind"] == "raw tensor bytes"
    assert product["bytes_per_meme_by_category"]["state"] > 0
    # Text to template: one `score` call a meme, whatever the number of templates.
    automatic = _row_alone(bench_report, "7")
    assert automatic["calls_per_meme_by_signature"].get("score") == pytest.approx(1.0)
    assert automatic["rpcs_per_meme"] == pytest.approx(1.0)
    # Same model, same search, same step loop: the embedded backend finds the same captions.
    assert bench_report["caption_agreement_with_mode_3"]["4"] >= 0.5
    proposals = bench_report["wire_proposals"]["bytes_per_meme"]
    assert proposals["context_sent_once"] < proposals["as_sent"]
    assert proposals["float16_state_tensor_content"] < proposals["float32_state"]
    assert proposals["float16_state_tensor_content"] < proposals["float16_state_typed_half_val"]


def test_original_memefly_over_rest_is_the_same_algorithm_with_json_on_the_wire(bench_report: dict) -> None:
    in_process, rest = _row_alone(bench_report, "1"), _row_alone(bench_report, "1-rest")
    # Same weights, same search, same client-side ranking: the same captions, and the same number of calls.
    for variant in ("1", "1-rest"):
        captions = [caption for row in _rows(bench_report, variant) for caption in row["captions"].values()]
        assert captions and all(captions), variant
    shared = set(in_process["captions"]) & set(rest["captions"])
    assert shared
    assert {name: rest["captions"][name] for name in shared} == {name: in_process["captions"][name] for name in shared}
    assert bench_report["mode1_rest_caption_agreement_with_in_process"] == 1.0
    assert rest["rpcs_per_meme"] == pytest.approx(in_process["rpcs_per_meme"])
    assert set(rest["calls_per_meme_by_signature"]) == {"encode_pixels", "full_prefix_softmax"}
    assert rest["decode_batch_mean"] == 1
    # The image goes as a JSON float array (several bytes per pixel value), not as JPEG bytes.
    by_category = lambda row: row["bytes_per_meme_by_category"]  # noqa: E731
    assert rest["bytes_kind"] == "HTTP bodies"
    assert by_category(rest)["image"] > 10 * by_category(in_process)["image"]
    assert by_category(rest)["results"] > by_category(in_process)["results"]
    assert by_category(rest)["framing"] > 0 and by_category(rest)["state"] == 0
    assert bench_report["mode1_rest_stand_in_json_cpu_ms_per_meme"] > 0


def test_each_served_model_gets_a_row_of_the_product_path(
    two_models: Path, serving_target: str, tmp_path: Path
) -> None:
    from bench.__main__ import other_models
    from bench.runner import BenchOptions, run
    from tests.support import TRANSFORMER_MODEL_NAME

    assert other_models(two_models, MODEL_NAME) == [TRANSFORMER_MODEL_NAME]
    options = BenchOptions(
        model_base_path=two_models,
        out_dir=tmp_path,
        model_name=MODEL_NAME,
        modes=(4,),
        concurrencies=(1,),
        rounds=1,
        min_memes=2,
        paired_rounds=0,
        serving_target=serving_target,
        quick=True,
        more_models=(TRANSFORMER_MODEL_NAME,),
    )
    report = run(options)
    gru, transformer = _row_alone(report, "4"), _row_alone(report, f"4@{TRANSFORMER_MODEL_NAME}")
    for row in (gru, transformer):
        assert row["available"] and row["memes"] >= 2 and row["rpcs_per_meme"] > 1
    assert transformer["title"].endswith(f"model {TRANSFORMER_MODEL_NAME}")
    # The transformer's context ([51, 128]) is far larger than the GRU's (128 floats), and every step carries it.
    assert transformer["bytes_per_meme"] > gru["bytes_per_meme"]
    assert f"| 4@{TRANSFORMER_MODEL_NAME} | in-process | 1 |" in (tmp_path / "report.md").read_text()
