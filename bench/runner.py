"""One benchmark run: every mode at every load, then the targets, the table, the JSON and the plot."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import report
from bench.load import Measurement, closed_loop, offline_batches
from bench.machine import contention, cpu_sample, machine_facts, training_processes
from bench.modes import (
    AutomaticMode,
    FullVocabularyStepMode,
    GenerateMode,
    Mode,
    OfflineBatchedMode,
    OriginalMemeflyMode,
    OriginalMemeflyRestMode,
    StepLoopMode,
    generate_unavailable_reason,
)
from bench.serving_tier import free_port, local_serving_tier, wait_until_available
from bench.wire import CallLedger, CountingInProcessBackend, CountingTfServingBackend, wire_proposals
from bench.workload import BenchImage, SearchConfig, load_images
from gateway.backends.base import ModelInfo
from gateway.templates import TemplateStore, shipped_templates_dir
from memefly.paths import DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    import numpy as np

    from gateway.backends.embedded import EmbeddedBackend

log = logging.getLogger("bench")

RPC_TIMEOUT_SECONDS = 120.0
"""Generous: at concurrency 64 a full-vocabulary step (mode 2) carries megabytes."""

TITLES = {
    1: "original Memefly: one call per beam per step, full padded prefix, full softmax",
    2: "gateway step loop, full-vocabulary log-probs per step (k = V)",
    3: "gateway step loop, in-graph top-k (product path)",
    4: "gateway step loop, embedded backend",
    5: "in-graph `generate`, one call per meme",
    6: "offline batched, in-process (machine limit)",
    7: "text to template (`POST /v1/memes/automatic`): one `score` call over every styled template",
}
TRANSPORTS = {1: "in-process", 2: "gRPC", 3: "gRPC", 4: "in-process", 5: "gRPC", 6: "in-process", 7: "gRPC"}
REST_VARIANT = "1-rest"
"""Mode 1 runs twice: in-process (variant "1", its lower bound) and as the seed deployed it (this one)."""
REST_TITLE = "original Memefly as deployed: the same calls, JSON over TF Serving's REST API (local stand-in)"
REST_TRANSPORT = "REST JSON"
REST_MAX_CONCURRENCY = 16
"""The REST variant's highest load: its memes are seconds each, so 64 clients would take minutes more,
and it saturates the CPUs well before that."""


@dataclass(frozen=True)
class BenchOptions:
    model_base_path: Path
    out_dir: Path
    model_name: str = DEFAULT_MODEL_NAME
    data_dir: Path | None = None
    """Template images and layouts (the data set's format); None: the shipped templates."""
    modes: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    rounds: int = 3
    """Memes per row: `rounds` × concurrency, at least `min_memes`."""
    min_memes: int = 16
    offline_batches: tuple[int, ...] = (16, 64, 256)
    offline_repeats: int = 2
    warmup_memes: int = 4
    """Memes made at each load before it is measured (first calls build and optimise graphs)."""
    serving_target: str | None = None
    """An already running serving tier; default: start `python -m serving` for the run."""
    profile: bool = False
    quick: bool = False
    paired_rounds: int = 3
    """Rounds of the interleaved phase that the targets are computed from (0: from the table's rows)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    more_models: tuple[str, ...] = ()
    """Other models served beside `model_name` (the transformer beside the GRU): each gets mode 4's row,
    the product path in-process, as variant `4@<name>`."""

    def memes_for(self, concurrency: int) -> int:
        return max(self.rounds * concurrency, self.min_memes)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def _serving(options: BenchOptions) -> Iterator[tuple[str, int | None]]:
    if options.serving_target:
        wait_until_available(options.serving_target, options.model_name, None, 60)
        yield options.serving_target, None
        return
    log_path = options.out_dir / "serving.log"
    with local_serving_tier(options.model_base_path, options.model_name, log_path) as (target, pid):
        yield target, pid


@contextlib.contextmanager
def _seed_serving(
    embedded: EmbeddedBackend, info: ModelInfo, log_path: Path
) -> Iterator[tuple[str, int, Callable[[bytes], np.ndarray]]]:
    """The seed replica, written to a temporary directory and served by a fresh `python -m serving` with
    its REST API on: (REST base URL, the tier's process id, the client's JPEG-to-pixels function)."""
    import tensorflow as tf

    from bench.seed_replica import SEED_MODEL_NAME, cut_encode_graph, image_pixels_function, write_seed_replica

    product = tf.saved_model.load(str(embedded.model_dir / str(embedded.version)))
    cut = cut_encode_graph(product)
    with tempfile.TemporaryDirectory(prefix="memefly-seed-") as base:
        write_seed_replica(product, cut, info.contract, Path(base))
        rest_port = free_port()
        with local_serving_tier(Path(base), SEED_MODEL_NAME, log_path, rest_api_port=rest_port) as (_, pid):
            yield f"http://127.0.0.1:{rest_port}", pid, image_pixels_function(cut)


def _variants(modes: tuple[int, ...], more_models: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """(mode, variant) in run order: every mode is one variant, named by its number, except mode 1, which
    also runs over REST JSON, and mode 4, which also runs on each of `more_models`."""
    variants = []
    for number in modes:
        variants.append((number, str(number)))
        if number == 1:
            variants.append((1, REST_VARIANT))
        if number == 4:
            variants.extend((4, f"4{report.MODEL_VARIANT}{name}") for name in more_models)
    return variants


def _title_and_transport(number: int, variant: str) -> tuple[str, str]:
    if variant == REST_VARIANT:
        return REST_TITLE, REST_TRANSPORT
    model = report.variant_model(variant)
    if model:
        return f"{TITLES[number]}, model {model}", TRANSPORTS[number]
    return TITLES[number], TRANSPORTS[number]


def _warm_up(mode: Mode, images: list[BenchImage], concurrency: int, memes: int) -> None:
    if memes > 0:
        closed_loop(mode, images, min(concurrency, memes), memes)


def run(options: BenchOptions) -> dict[str, Any]:
    """Runs every selected mode and writes report.json, report.md and report.png to `options.out_dir`."""
    import tensorflow as tf

    from gateway.backends.embedded import EmbeddedBackend

    options.out_dir.mkdir(parents=True, exist_ok=True)
    images = load_images(options.data_dir)
    trainers_before = training_processes()
    started = time.perf_counter()
    embedded = EmbeddedBackend(options.model_base_path, options.model_name)
    info = embedded.load_metadata()
    config = options.search
    rows: list[dict[str, Any]] = []
    proposals: dict[str, Any] | None = None
    profiles: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    stand_in_json_ms: float | None = None
    _log(f"model {info.name} v{info.version} ({info.contract.decoder}, vocab {info.contract.vocab_size}) "
         f"from {options.model_base_path}; {len(images)} images")  # fmt: skip

    # The seed tier (entered on the stack) stops first, after the run's last CPU sample, which it is part of.
    with _serving(options) as (target, server_pid), contextlib.ExitStack() as seed_tier:
        server_pids = (server_pid,) if server_pid else ()
        seed_pids: tuple[int, ...] = ()
        cpu_before = cpu_sample(list(server_pids))

        def measure(
            number: int,
            variant: str,
            mode: Mode,
            bytes_kind: str,
            concurrencies: tuple[int, ...] = options.concurrencies,
            pids: tuple[int, ...] = server_pids,
        ) -> None:
            title, _ = _title_and_transport(number, variant)
            for concurrency in concurrencies:
                _warm_up(mode, images, concurrency, 0 if options.quick else min(options.warmup_memes, concurrency))
                memes = options.memes_for(concurrency)
                measurement = closed_loop(mode, images, concurrency, memes, pids)
                rows.append(report.measured_row(number, title, mode.transport, bytes_kind, measurement, variant))
                if mode.transport == "gRPC" and not server_pids:
                    rows[-1]["cpu_ms_per_meme"] = None  # the serving tier is not ours to measure
                _log_row(rows[-1])

        def grpc_mode(build: Callable[[CountingTfServingBackend, CallLedger], Mode]) -> Mode:
            ledger = CallLedger()
            backend = CountingTfServingBackend(target, options.model_name, RPC_TIMEOUT_SECONDS, ledger)
            return build(backend, ledger)

        kept: dict[str, Mode] = {}  # by variant: the modes the interleaved target phase runs again
        offline: OfflineBatchedMode | None = None
        for number, variant in _variants(options.modes, options.more_models):
            _log(f"mode {number}: {_title_and_transport(number, variant)[0]}")
            try:
                if variant == "1":
                    mode: Mode = OriginalMemeflyMode(embedded, info, config)
                    _warm_up(mode, images, 1, 1)
                    measure(1, variant, mode, "raw tensor bytes")
                    kept[variant] = mode
                elif variant == REST_VARIANT:
                    from bench.seed_replica import SEED_MODEL_NAME

                    rest_url, seed_pid, image_pixels = seed_tier.enter_context(
                        _seed_serving(embedded, info, options.out_dir / "serving_seed.log")
                    )
                    seed_pids = (seed_pid,)
                    mode = OriginalMemeflyRestMode(
                        rest_url, SEED_MODEL_NAME, info, config, image_pixels, RPC_TIMEOUT_SECONDS
                    )
                    _warm_up(mode, images, 1, 1)
                    loads = tuple(c for c in options.concurrencies if c <= REST_MAX_CONCURRENCY)
                    measure(1, variant, mode, "HTTP bodies", loads, seed_pids)
                    rows.extend(
                        report.unavailable_row(
                            1, REST_TITLE, REST_TRANSPORT, c,
                            f"not run: the REST variant runs at concurrency ≤ {REST_MAX_CONCURRENCY}", variant,
                        )
                        for c in options.concurrencies
                        if c not in loads
                    )  # fmt: skip
                    kept[variant] = mode
                    stand_in_json_ms = _stand_in_json_ms_per_meme(mode, images[:2] if options.quick else images)
                    _log(f"  the stand-in's Python JSON code: {stand_in_json_ms:.0f} CPU ms per meme of it")
                elif number == 2:
                    mode = grpc_mode(
                        lambda backend, ledger: FullVocabularyStepMode(2, TITLES[2], "gRPC", backend, ledger, config)
                    )
                    _warm_up(mode, images, 1, 1)
                    measure(2, variant, mode, "serialized")
                    mode.close()
                elif number == 3:
                    mode = grpc_mode(
                        lambda backend, ledger: StepLoopMode(3, TITLES[3], "gRPC", backend, ledger, config)
                    )
                    _warm_up(mode, images, 1, 2)
                    measure(3, variant, mode, "serialized")
                    proposals = _record_proposals(mode, images)
                    if options.profile:
                        from bench.profiling import profile_mode

                        for concurrency in (1, 16):
                            profiles[f"mode3_c{concurrency}"] = profile_mode(
                                mode, images, concurrency, options.memes_for(concurrency), server_pid, options.out_dir
                            )
                    kept[variant] = mode
                elif number == 4 and report.variant_model(variant):
                    other = EmbeddedBackend(options.model_base_path, report.variant_model(variant))
                    ledger = CallLedger()
                    mode = StepLoopMode(
                        4, TITLES[4], "in-process", CountingInProcessBackend(other, ledger), ledger, config
                    )
                    _warm_up(mode, images, 1, 2)
                    measure(4, variant, mode, "raw tensor bytes")
                    mode.close()
                elif number == 4:
                    ledger = CallLedger()
                    mode = StepLoopMode(
                        4, TITLES[4], "in-process", CountingInProcessBackend(embedded, ledger), ledger, config
                    )
                    _warm_up(mode, images, 1, 2)
                    measure(4, variant, mode, "raw tensor bytes")
                    kept[variant] = mode
                elif number == 5:
                    reason = generate_unavailable_reason(set(embedded.signatures.keys()))
                    if reason is not None:
                        _log(f"mode 5 skipped: {reason}")
                        rows.extend(
                            report.unavailable_row(5, TITLES[5], "gRPC", c, reason) for c in options.concurrencies
                        )
                        continue
                    mode = grpc_mode(lambda backend, ledger: GenerateMode(backend, info, config))
                    _warm_up(mode, images, 1, 2)
                    measure(5, variant, mode, "serialized")
                    mode.close()
                elif number == 6:
                    ledger = CallLedger()
                    offline = OfflineBatchedMode(CountingInProcessBackend(embedded, ledger), info, ledger, config)
                    offline.batch([image.jpeg for image in images[:2]])  # warm-up
                    for batch in options.offline_batches:
                        if not options.quick:
                            offline.batch([images[i % len(images)].jpeg for i in range(batch)])
                        measurement: Measurement = offline_batches(offline, images, batch, options.offline_repeats)
                        rows.append(report.measured_row(6, TITLES[6], "in-process", "raw tensor bytes", measurement))
                        _log_row(rows[-1])
                elif number == 7:
                    if not info.contract.styles:
                        reason = "the model has no styles to choose a template from"
                        rows.extend(
                            report.unavailable_row(7, TITLES[7], "gRPC", c, reason) for c in options.concurrencies
                        )
                        continue
                    templates = TemplateStore(options.data_dir or shipped_templates_dir()).all()
                    mode = grpc_mode(
                        lambda backend, ledger, templates=templates: AutomaticMode(backend, info, templates)
                    )
                    _warm_up(mode, images, 1, 2)
                    measure(7, variant, mode, "serialized")
                    mode.close()
                else:
                    raise ValueError(f"no mode {number}")
            except Exception as error:  # one broken mode must not lose the others' rows
                log.exception("mode %s failed", variant)
                done = {row["concurrency"] for row in rows if row["variant"] == variant}
                title, transport = _title_and_transport(number, variant)
                rows.extend(
                    report.unavailable_row(number, title, transport, c, f"failed: {error}", variant)
                    for c in options.concurrencies
                    if c not in done
                )
        if options.paired_rounds:
            _log(f"targets: the compared cells again, interleaved, {options.paired_rounds} rounds")
            paired = interleaved_targets(kept, offline, rows, images, options, server_pids)
        traces = kept["1"].traces() if isinstance(kept.get("1"), OriginalMemeflyMode) else None
        for mode in kept.values():
            mode.close()
        cpu_after = cpu_sample(list(server_pids + seed_pids))

    wall = time.perf_counter() - started
    trainers_after = training_processes()
    checks = report.targets(rows, paired)
    machine = machine_facts()
    result: dict[str, Any] = {
        "machine": machine,
        "contention": {
            "memefly_train_running_at_start": trainers_before,
            "memefly_train_running_at_end": trainers_after,
            **contention(cpu_before, cpu_after, wall),
        },
        "model": {
            "base_path": str(options.model_base_path),
            "name": info.name,
            "version": info.version,
            "decoder": info.contract.decoder,
            "encoder": info.contract.encoder,
            "vocab_size": info.contract.vocab_size,
            "state_size": info.contract.state_size,
            "context_shape": list(info.contract.context_shape),
            "max_length": info.contract.max_length,
            "signatures": sorted(embedded.signatures.keys()),
        },
        "settings": {**asdict(config), "effective_max_length": min(config.max_length, info.contract.max_length),
                     "concurrencies": list(options.concurrencies), "offline_batches": list(options.offline_batches),
                     "rounds": options.rounds, "min_memes": options.min_memes, "quick": options.quick,
                     "images": [image.name for image in images],
                     "serving": options.serving_target or "python -m serving (started for this run)",
                     "tensorflow_threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                                            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}},
        "rows": rows,
        "targets": checks,
        "interleaved_target_cells": paired,
        "caption_agreement_with_mode_3": _caption_agreement(rows, "3"),
        "mode1_rest_caption_agreement_with_in_process": _caption_agreement(rows, "1").get(REST_VARIANT),
        "mode1_rest_stand_in_json_cpu_ms_per_meme": stand_in_json_ms,
        "wire_proposals": proposals,
        "profiles": profiles,
        "mode1_function_traces": traces,
    }  # fmt: skip
    embedded.close()
    _write(result, options.out_dir)
    return result


def interleaved_targets(
    kept: dict[str, Mode],
    offline: OfflineBatchedMode | None,
    rows: list[dict[str, Any]],
    images: list[BenchImage],
    options: BenchOptions,
    server_pids: tuple[int, ...],
) -> dict[str, Any]:
    """The cells the targets compare, measured again round-robin (A B C A B C ...), so that a change in
    background load hits every cell alike. Per cell: memes/s over all rounds, mean latency, and each round."""
    cells: list[tuple[str, Callable[[], Measurement]]] = []
    for variant, concurrency in ((REST_VARIANT, 1), ("1", 1), ("3", 1), ("4", 1), ("3", 16)):
        if variant in kept and concurrency in options.concurrencies:
            mode = kept[variant]
            memes = len(images) if concurrency == 1 else 2 * concurrency
            cells.append(
                (
                    f"{variant}@{concurrency}",
                    lambda m=mode, c=concurrency, n=memes: closed_loop(m, images, c, n, server_pids),
                )
            )
    offline_rows = [row for row in rows if row["mode"] == 6 and row["available"]]
    if offline is not None and offline_rows:
        batch = max(offline_rows, key=lambda row: row["memes_per_second"])["offline_batch"]
        cells.append((f"6@batch{batch}", lambda b=batch: offline_batches(offline, images, b, 1)))
    results: dict[str, Any] = {}
    for _ in range(options.paired_rounds):
        for name, run_cell in cells:
            measurement = run_cell()
            cell = results.setdefault(
                name, {"memes": 0, "seconds": 0.0, "round_memes_per_second": [], "round_mean_latency_ms": []}
            )
            done = len(measurement.latencies)
            cell["memes"] += done
            cell["seconds"] += measurement.seconds
            cell["round_memes_per_second"].append(done / measurement.seconds if measurement.seconds else 0.0)
            cell["round_mean_latency_ms"].append(1000 * sum(measurement.latencies) / done if done else None)
    for name, cell in results.items():
        cell["memes_per_second"] = cell["memes"] / cell["seconds"] if cell["seconds"] else 0.0
        latencies = [value for value in cell["round_mean_latency_ms"] if value is not None]
        cell["mean_latency_ms"] = sum(latencies) / len(latencies) if latencies else None
        _log(f"  {name}: {cell['memes_per_second']:.2f} memes/s, mean {cell['mean_latency_ms'] or 0:.0f} ms")
    return results


def _record_proposals(mode: Mode, images: list[BenchImage]) -> dict[str, Any]:
    """Every exchange of one meme per image at concurrency 1, re-serialized under each contract change."""
    mode.ledger.recording = []
    try:
        closed_loop(mode, images, 1, len(images))
        return wire_proposals(mode.ledger.recording, len(images))
    finally:
        mode.ledger.recording = None


def _captions(rows: list[dict[str, Any]], variant: str) -> dict[str, str]:
    """Image name → the first best caption a variant's rows found for it."""
    captions: dict[str, str] = {}
    for row in rows:
        if row["variant"] == variant and row["available"]:
            for name, caption in row["captions"].items():
                captions.setdefault(name, caption)
    return captions


def _caption_agreement(rows: list[dict[str, Any]], reference_variant: str) -> dict[str, float | None]:
    """Per variant: the share of images whose best caption equals the reference's (same model, same search)."""
    reference = _captions(rows, reference_variant)
    agreement: dict[str, float | None] = {}
    for variant in sorted({row["variant"] for row in rows}):
        captions = _captions(rows, variant)
        shared = [name for name in captions if name in reference]
        agreement[variant] = sum(captions[name] == reference[name] for name in shared) / len(shared) if shared else None
    return agreement


def _stand_in_json_ms_per_meme(mode: OriginalMemeflyRestMode, images: list[BenchImage]) -> float:
    """One meme per image, alone, recorded; then the CPU ms per meme that the local stand-in's Python JSON
    code spends on those exchanges (tensorflow_model_server's is C++)."""
    from bench.seed_replica import stand_in_json_cpu_seconds

    mode.recording = exchanges = []
    try:
        memes = len(closed_loop(mode, images, 1, len(images)).latencies)
    finally:
        mode.recording = None
    return 1000 * stand_in_json_cpu_seconds(exchanges) / max(memes, 1)


def _log_row(row: dict[str, Any]) -> None:
    load = f"batch {row['offline_batch']}" if row["offline_batch"] else f"c={row['concurrency']}"
    latency = row["latency_ms"]
    _log(
        f"  ({row['variant']}) {load}: {row['memes']} memes, {row['memes_per_second']:.2f}/s, "
        f"p50 {latency['p50'] or 0:.0f} ms, p95 {latency['p95'] or 0:.0f} ms, {row['rpcs_per_meme']:.1f} calls/meme, "
        f"{row['bytes_per_meme'] / 1024:.1f} KiB/meme, batch {row['decode_batch_mean'] or 0:.1f}, "
        f"CPU {row['cpu_ms_per_meme'] or 0:.0f} ms/meme, others busy {row['other_processes_cpus_busy']:.2f} CPUs"
        + (f", {row['errors']} errors: {row['first_error']}" if row["errors"] else "")
    )


def machine_line(result: dict[str, Any]) -> str:
    machine, load = result["machine"], result["contention"]
    training = "a `memefly train` job running" if load["memefly_train_running_at_start"] else "no training job"
    return (
        f"{machine['cpu_model']} ({machine['cpu_family_model']}), {machine['cpus']} vCPUs"
        f"{' under ' + machine['hypervisor'] if machine['hypervisor'] else ''}, {machine['memory_gib']} GiB; "
        f"TensorFlow {machine['tensorflow']}, Python {machine['python']}; {training}; other processes kept "
        f"{load['other_processes_cpus_busy']} of {machine['cpus']} CPUs busy during the run"
    )


def _write(result: dict[str, Any], out_dir: Path) -> None:
    report.write_json(result, out_dir / "report.json")
    model = result["model"]
    title = f"model {model['name']} v{model['version']} ({model['decoder']}, vocab {model['vocab_size']})"
    text = "\n\n".join(
        [
            f"Machine: {machine_line(result)}.",
            f"Model: {title}, from `{model['base_path']}`.",
            report.markdown_table(result["rows"]),
            report.targets_table(result["targets"]),
            report.stand_in_json_note(result["mode1_rest_stand_in_json_cpu_ms_per_meme"]),
            report.proposals_table(result["wire_proposals"]),
        ]
    )
    (out_dir / "report.md").write_text(text + "\n")
    report.plot(result["rows"], out_dir / "report.png", f"{title}; {result['machine']['cpus']} vCPUs")
