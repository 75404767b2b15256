"""Two bundles' evaluation reports side by side: each metric a row, the better value in bold."""

from __future__ import annotations

from evaluation.compare import comparison_table


def test_the_better_value_of_each_metric_is_bold_and_a_missing_one_is_a_dash() -> None:
    table = comparison_table(
        {
            "gru": {"perplexity_with_image": 56.5, "distinct_2": 0.84},
            "transformer": {"perplexity_with_image": 50.1, "distinct_2": 0.80, "style_adherence": 0.6},
        }
    )
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert rows["validation perplexity with the image"].endswith("| 56.500 | **50.100** |")
    assert rows["distinct-2 (sampled)"].endswith("| **0.840** | 0.800 |")
    assert rows["style adherence"].endswith("| – | 0.600 |")
    assert table.splitlines()[0] == "| metric | gru | transformer |"
