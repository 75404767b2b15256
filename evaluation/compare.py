"""Two bundles' evaluation reports side by side, as a Markdown table: `python -m evaluation.compare A B`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = (
    ("perplexity_with_image", "validation perplexity with the image", False),
    ("perplexity_ratio", "perplexity ratio (image / blanked)", False),
    ("perplexity_with_own_topic_words", "perplexity with its own topic words", False),
    ("distinct_2", "distinct-2 (sampled)", True),
    ("verbatim_copy_share", "verbatim copies", False),
    ("template_retrieval_top1", "template retrieval top-1", True),
    ("automatic_top1", "text to template top-1", True),
    ("automatic_top5", "text to template top-5", True),
    ("photos_subject_named_share", "photos: subject named", True),
    ("photos_distinct_2_across_photos", "photos: distinct-2 across photos", True),
    ("templates_best_caption_shared_pairs", "templates: pairs sharing their best caption", False),
    ("style_adherence", "style adherence", True),
    ("topic_adherence", "topic adherence", True),
)
"""(key, label, higher is better)."""


def comparison_table(reports: dict[str, dict]) -> str:
    """A row a metric, a column a bundle; the better value of each row in bold."""
    names = list(reports)
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for key, label, higher_better in ROWS:
        values = [reports[name].get(key) for name in names]
        known = [v for v in values if isinstance(v, int | float)]
        best = (max if higher_better else min)(known) if len(known) > 1 else None
        cells = [
            "–" if v is None else (f"**{v:.3f}**" if v == best and known.count(best) == 1 else f"{v:.3f}")
            for v in values
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    bundles = [Path(arg) for arg in (argv if argv is not None else sys.argv[1:])]
    reports = {}
    for bundle in bundles:
        report = json.loads((bundle / "evaluation.json").read_text(encoding="utf-8"))
        reports[f"{report.get('decoder', bundle.name)} (`{bundle.name}/`)"] = report
    print(comparison_table(reports), end="")


if __name__ == "__main__":
    main()
