"""Rows from measurements, the targets, the Markdown table, the JSON report and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import Measurement
from bench.wire import CATEGORIES

KIB = 1024
SHORT_NAMES = {
    "1": "original in-process",
    "1-rest": "original REST JSON",
    "2": "full-vocab gRPC",
    "3": "top-k gRPC",
    "4": "embedded",
    "5": "generate gRPC",
    "6": "offline",
}
"""By variant: a mode's number, or mode 1's REST variant."""


MODEL_VARIANT = "@"
"""Mode 4 on another model: variant `4@<model name>`."""


def variant_model(variant: str) -> str | None:
    """The model a `4@<model>` variant runs on; None for every other variant."""
    return variant.partition(MODEL_VARIANT)[2] or None


def short_name(variant: str, default: str = "") -> str:
    """A variant's name in the plot: mode 4 on another model (`4@<model>`) is named after that model."""
    number, _, model = variant.partition(MODEL_VARIANT)
    return f"{SHORT_NAMES.get(number, default)}, {model}" if model else SHORT_NAMES.get(variant, default)


def _mode_cell(row: dict[str, Any]) -> str:
    return row["variant"] if variant_model(row.get("variant", "")) else str(row["mode"])


WIRE_TARGET_BYTES = 256 * KIB
RPC_TARGET = 25
INFORMATION = "info"
"""A target line's `op` when it is reported for information, without a verdict."""


def _percentiles_ms(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    values = np.asarray(latencies) * 1000
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(values.mean())}


def measured_row(
    number: int, title: str, transport: str, bytes_kind: str, measurement: Measurement, variant: str | None = None
) -> dict[str, Any]:
    """One table row. `variant` tells apart rows of one mode run two ways (mode 1: "1" and "1-rest");
    by default it is the mode's number."""
    done = len(measurement.latencies)
    per_meme = max(done, 1)
    ledger = measurement.ledger
    captions: dict[str, str] = {}
    for image_name, outcome in measurement.outcomes:
        captions.setdefault(image_name, outcome.caption)
    return {
        "mode": number,
        "variant": variant or str(number),
        "title": title,
        "transport": transport,
        "available": True,
        "note": "",
        "concurrency": measurement.concurrency,
        "offline_batch": measurement.offline_batch,
        "memes": done,
        "errors": len(measurement.errors),
        "first_error": measurement.errors[0] if measurement.errors else None,
        "seconds": measurement.seconds,
        "memes_per_second": done / measurement.seconds if measurement.seconds > 0 else 0.0,
        "latency_ms": _percentiles_ms(measurement.latencies),
        "model_calls": ledger.total_calls,
        "rpcs_per_meme": ledger.total_calls / per_meme,
        "calls_per_meme_by_signature": {name: count / per_meme for name, count in sorted(ledger.calls.items())},
        "calls_a_meme_took_part_in": float(np.mean([o.model_calls for _, o in measurement.outcomes]))
        if measurement.outcomes
        else None,
        "bytes_kind": bytes_kind,
        "bytes_per_meme": ledger.total_bytes / per_meme,
        "request_bytes_per_meme": ledger.request_bytes / per_meme,
        "response_bytes_per_meme": ledger.response_bytes / per_meme,
        "bytes_per_meme_by_category": {c: ledger.bytes_by_category.get(c, 0) / per_meme for c in CATEGORIES},
        "decode_batch_mean": ledger.decode_beams / ledger.decode_calls if ledger.decode_calls else None,
        "decode_calls": ledger.decode_calls,
        "accounting_ms_per_meme": 1000 * ledger.accounting_seconds / per_meme,
        "cpu_ms_per_meme": 1000 * measurement.cpu_seconds / per_meme,
        "other_processes_cpus_busy": measurement.other_cpu_seconds / measurement.seconds
        if measurement.seconds
        else 0.0,
        "captions": captions,
    }


def unavailable_row(
    number: int, title: str, transport: str, concurrency: int | None, note: str, variant: str | None = None
) -> dict[str, Any]:
    return {
        "mode": number,
        "variant": variant or str(number),
        "title": title,
        "transport": transport,
        "available": False,
        "note": note,
        "concurrency": concurrency,
        "offline_batch": None,
    }


def _row(rows: list[dict[str, Any]], variant: str, concurrency: int | None = None) -> dict[str, Any] | None:
    for row in rows:
        if row["variant"] == variant and row["available"] and row["concurrency"] == concurrency:
            return row
    return None


def targets(rows: list[dict[str, Any]], interleaved: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's targets, each as a ratio or amount measured in this run (None when a row is missing).

    The speed ratios come from the interleaved cells when there are any: one ratio per round (both sides
    measured back to back, under the same background load), and the median over the rounds. Without them
    they come from the table's rows. Wire bytes and RPCs come from the rows (they do not vary with load).

    The (1) target compares mode 1 as the seed deployed it (REST JSON); the same ratio for mode 1
    in-process, the algorithm's lower bound, follows it as information, without a verdict.
    """
    product = _row(rows, "3", 1)
    offline = [row for row in rows if row["mode"] == 6 and row["available"]]
    offline_best = max((row["memes_per_second"] for row in offline), default=None)
    latency = lambda row: row and row["latency_ms"]["mean"]  # noqa: E731
    speed = lambda row: row and row["memes_per_second"]  # noqa: E731

    def from_rows(numerator: float | None, denominator: float | None) -> tuple[float | None, list[float]]:
        return (numerator / denominator if numerator is not None and denominator else None), []

    def from_rounds(numerator: str, denominator: str, key: str) -> tuple[float | None, list[float]]:
        cells = interleaved or {}
        if numerator not in cells or denominator not in cells:
            return None, []
        ratios = [a / b for a, b in zip(cells[numerator][key], cells[denominator][key], strict=False) if b]
        return (float(np.median(ratios)) if ratios else None), ratios

    offline_cell = next((name for name in interleaved or {} if name.startswith("6@")), "6@")
    if interleaved:
        source = "interleaved rounds, median"
        latency_3_4 = from_rounds("3@1", "4@1", "round_mean_latency_ms")
        speed_3_6 = from_rounds("3@16", offline_cell, "round_memes_per_second")
        latency_1_3 = from_rounds("1-rest@1", "3@1", "round_mean_latency_ms")
        latency_1_in_process_3 = from_rounds("1@1", "3@1", "round_mean_latency_ms")
    else:
        source = "table rows"
        latency_3_4 = from_rows(latency(product), latency(_row(rows, "4", 1)))
        speed_3_6 = from_rows(speed(_row(rows, "3", 16)), offline_best)
        latency_1_3 = from_rows(latency(_row(rows, "1-rest", 1)), latency(product))
        latency_1_in_process_3 = from_rows(latency(_row(rows, "1", 1)), latency(product))
    checks = [
        ("(3) per meme ≤ 1.3 × (4) per meme, concurrency 1 (mean latency)", latency_3_4, "≤", 1.3, "ratio", source),
        ("(3) at concurrency 16 ≥ 80 % of (6) (memes/s)", speed_3_6, "≥", 0.8, "fraction", source),
        (
            "(3) bytes on the wire per meme ≤ 256 KiB, concurrency 1",
            (product and product["bytes_per_meme"] / KIB, []),
            "≤",
            WIRE_TARGET_BYTES / KIB,
            "KiB",
            "table row",
        ),
        (
            "(3) RPCs per meme ≤ 25, concurrency 1",
            (product and product["rpcs_per_meme"], []),
            "≤",
            RPC_TARGET,
            "RPCs",
            "table row",
        ),
        (
            "(1) per meme ≥ 10 × (3) per meme, concurrency 1 (mean latency); (1) over REST JSON, as deployed",
            latency_1_3,
            "≥",
            10.0,
            "ratio",
            source,
        ),
        (
            "(1) in-process (the algorithm's lower bound) per meme ÷ (3) per meme, concurrency 1 (mean latency)",
            latency_1_in_process_3,
            INFORMATION,
            10.0,
            "ratio",
            source,
        ),
    ]
    results = []
    for name, (measured, per_round), op, threshold, unit, where in checks:
        if measured is None or op == INFORMATION:
            passed = None
        else:
            passed = measured <= threshold if op == "≤" else measured >= threshold
        results.append({"target": name, "measured": measured, "per_round": per_round, "op": op,
                        "threshold": threshold, "unit": unit, "passed": passed, "source": where})  # fmt: skip
    return results


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| mode | transport | conc. | memes/s | p50 ms | p95 ms | p99 ms | CPU ms/meme | RPCs/meme | KiB/meme "
        "| image | context | state | tokens | results | framing | mean decode batch |"
    )
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for row in rows:
        load = f"batch {row['offline_batch']}" if row.get("offline_batch") else str(row["concurrency"])
        if not row["available"]:
            lines.append(f"| {_mode_cell(row)} | {row['transport']} | {load} | {row['note']} |" + " |" * 13)
            continue
        kib = row["bytes_per_meme_by_category"]
        wire = row["bytes_per_meme"] / KIB
        marker = "*" if row["bytes_kind"] == "raw tensor bytes" else ""
        lines.append(
            "| "
            + " | ".join(
                [
                    _mode_cell(row),
                    row["transport"],
                    load,
                    _fmt(row["memes_per_second"], 2),
                    _fmt(row["latency_ms"]["p50"], 0),
                    _fmt(row["latency_ms"]["p95"], 0),
                    _fmt(row["latency_ms"]["p99"], 0),
                    _fmt(row["cpu_ms_per_meme"], 0),
                    _fmt(row["rpcs_per_meme"], 1),
                    _fmt(wire, 1) + marker,
                    *(_fmt(kib[c] / KIB, 1) for c in CATEGORIES),
                    _fmt(row["decode_batch_mean"], 1),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def targets_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | verdict | from |", "| --- | --- | --- | --- |"]
    for check in checks:
        verdict = {True: "pass", False: "**fail**", None: "not measured"}[check["passed"]]
        if check["op"] == INFORMATION and check["measured"] is not None:
            verdict = "info"
        measured = "–" if check["measured"] is None else f"{check['measured']:,.2f} {check['unit']}"
        if len(check["per_round"]) > 1:
            measured += f" (rounds {min(check['per_round']):.2f}–{max(check['per_round']):.2f})"
        lines.append(f"| {check['target']} | {measured} | {verdict} | {check['source']} |")
    return "\n".join(lines)


PROPOSAL_LABELS = {
    "as_sent": "as sent in this run (context every step)",
    "float32_state": "float32 state, packed both ways (the contract before `state_dtype`)",
    "float16_state_tensor_content": "float16 state, packed both ways (`tensor_content`)",
    "float16_state_typed_half_val": "float16 state, answered in TF Serving's default typed `half_val`",
    "context_sent_once": "context sent once per request, not every step",
    "state_half_width": "state half as wide (e.g. GRU 128 instead of 256), as sent",
    "float16_state_and_context_once": "float16 state + context once",
    "float16_state_context_once_half_width": "float16 state + context once + half-width state",
}


def stand_in_json_note(cpu_ms_per_meme: float | None) -> str:
    """How much of mode 1 over REST is the local stand-in's own JSON code, which TF Serving has in C++."""
    if cpu_ms_per_meme is None:
        return ""
    return (
        f"Mode 1 over REST JSON: the local stand-in's Python JSON code (parsing each request body, writing each "
        f"answer) takes {cpu_ms_per_meme:,.0f} CPU ms per meme of it, measured alone on one meme per image. "
        f"tensorflow_model_server does that work in C++ (rapidjson)."
    )


def proposals_table(proposals: dict[str, Any] | None) -> str:
    """What each contract change would make (3)'s bytes per meme, from re-serialized real exchanges."""
    if not proposals:
        return ""
    lines = ["| wire format | KiB/meme | saving | ≤ 256 KiB |", "| --- | --- | --- | --- |"]
    for name, value in proposals["bytes_per_meme"].items():
        saving = proposals["saving_fraction"][name]
        fits = "yes" if value <= WIRE_TARGET_BYTES else "no"
        lines.append(f"| {PROPOSAL_LABELS.get(name, name)} | {value / KIB:,.1f} | {saving:.0%} | {fits} |")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")


def plot(rows: list[dict[str, Any]], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ((throughput, latency), (wire, calls)) = plt.subplots(2, 2, figsize=(13, 9))
    variants = sorted({row["variant"] for row in rows if row["available"] and row["concurrency"] is not None})
    for variant in variants:
        points = sorted(
            (row["concurrency"], row)
            for row in rows
            if row["variant"] == variant and row["available"] and row["concurrency"]
        )
        if not points:
            continue
        label = f"({points[0][1]['mode']}) {short_name(variant, points[0][1]['transport'])}"
        x = [c for c, _ in points]
        throughput.plot(x, [r["memes_per_second"] for _, r in points], marker="o", label=label)
        latency.plot(x, [r["latency_ms"]["p50"] for _, r in points], marker="o", label=f"{label} p50")
        latency.plot(x, [r["latency_ms"]["p95"] for _, r in points], linestyle=":", color=latency.lines[-1].get_color())
    offline = [row for row in rows if row["mode"] == 6 and row["available"]]
    if offline:
        best = max(offline, key=lambda row: row["memes_per_second"])
        throughput.axhline(best["memes_per_second"], color="black", linestyle="--",
                           label=f"(6) offline, batch {best['offline_batch']}")  # fmt: skip
    for axis in (throughput, latency):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    throughput.set_ylabel("memes / s")
    throughput.set_title("throughput")
    latency.set_yscale("log")
    latency.set_ylabel("latency per meme, ms (dotted: p95)")
    latency.set_title("latency")

    single = [row for row in rows if row["available"] and row["concurrency"] == 1]
    names = [f"({row['mode']}) {short_name(row['variant'])}" for row in single]
    bottom = np.zeros(len(single))
    for category in CATEGORIES:
        values = np.array([row["bytes_per_meme_by_category"][category] / KIB for row in single])
        wire.bar(names, values, bottom=bottom, label=category)
        bottom += values
    wire.axhline(WIRE_TARGET_BYTES / KIB, color="red", linestyle="--", label="256 KiB target for (3)")
    for x, total in enumerate(bottom):
        wire.annotate(f"{total:,.0f}", (x, total), ha="center", va="bottom", fontsize=8)
    wire.set_ylabel("KiB per meme (concurrency 1)")
    wire.tick_params(axis="x", labelsize=8)
    calls.tick_params(axis="x", labelsize=8)
    wire.set_title("where the bytes go (gRPC: serialized; REST: HTTP bodies; in-process: raw tensors)")
    wire.legend(fontsize=8)
    calls.bar(names, [row["rpcs_per_meme"] for row in single])
    calls.axhline(RPC_TARGET, color="red", linestyle="--", label="25 RPCs target for (3)")
    calls.set_yscale("log")
    calls.set_ylabel("model calls per meme (concurrency 1)")
    calls.set_title("model calls per meme")
    calls.legend(fontsize=8)
    figure.suptitle(f"memefly benchmark: {subtitle}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
