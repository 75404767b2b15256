"""Proves a model version loads and answers in each declared TF Serving target before it is deployed.

`python -m export.serving_check` (`make serving-check`, which first makes `.venv-tf<X.Y.Z>` with
`tensorflow-cpu==X.Y.Z` for each version in `serving/versions.env`):

1. runs `export.serving_probe` with this environment's TensorFlow (the export's) on two real photos
   (skimage's chelsea as JPEG, coffee as PNG): the reference answers of every signature;
2. for each target release, runs the probe in that release's environment on exactly the same inputs: every
   op registered, the version loaded TF Serving's way, every signature called;
3. compares: strings and integers (captions, token ids, concepts, styles) identical, floats within
   `TOLERANCES`; and writes a record per target release, named after the version's content digest
   (`memefly.serving_targets`), which `make deploy`, `make deploy-plan` and `make compose-up` require.

`--verify TARGET` only checks that such records exist and passed (no TensorFlow needed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from memefly.contract import GENERATE
from memefly.paths import DEFAULT_MODEL_BASE_PATH, DEFAULT_MODEL_NAME, REPO_ROOT
from memefly.serving_targets import (
    DECLARATIONS,
    DEFAULT_CHECKS_DIR,
    NotCheckedError,
    Target,
    export_tensorflow,
    require_checked,
    serving_target,
    serving_targets,
    version_digest,
    write_record,
)

TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (2.0**-10, 2.0**-10)}
"""(absolute, relative) per dtype: |target - export| <= absolute + relative * |export|. float16 allows one
unit in the last place at 1.0; the answers measured so far differ by at most 4e-6 (README)."""


class CheckError(RuntimeError):
    """The check could not run (no environment for a target, a probe that crashed)."""


@dataclass
class Comparison:
    problems: list[str] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    captions_identical: bool = False

    @property
    def passed(self) -> bool:
        return not self.problems


def venv_python(venv_root: Path, tensorflow: str) -> Path:
    return venv_root / f".venv-tf{tensorflow}" / "bin" / "python"


def check_photos(folder: Path) -> list[Path]:
    """Two real photos: chelsea as the JPEG the gateway sends, coffee as the PNG file skimage ships."""
    from PIL import Image
    from skimage import data

    photos = Path(data.__file__).parent
    chelsea = folder / "chelsea.jpg"
    Image.open(photos / "chelsea.png").convert("RGB").save(chelsea, format="JPEG", quality=90)
    return [chelsea, photos / "coffee.png"]


def run_probe(python: Path | str, version_dir: Path, out: Path, source: list[str]) -> dict[str, Any]:
    """`python -m export.serving_probe` in the given interpreter's environment; its result."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    command = [str(python), "-m", "export.serving_probe", "--saved-model", str(version_dir), "--out", str(out), *source]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        raise CheckError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def _decode(text: str) -> np.ndarray:
    from export.serving_probe import decode_tensor

    return decode_tensor(text)


def compare(reference: dict[str, Any], target: dict[str, Any]) -> Comparison:
    """The target's answers against the export's, call by call and output by output."""
    result = Comparison()
    ops = target["ops"]
    for key, what in (
        ("unregistered", "ops not registered in this release"),
        ("unknown_attrs", "op attributes this release does not know"),
        ("python_ops", "Python-function ops (TF Serving has no Python)"),
    ):
        if ops[key]:
            result.problems.append(f"{what}: {', '.join(ops[key])}")
    for key in ("load_error", "call_error"):
        if key in target:
            result.problems.append(f"{key.replace('_', ' ')}: {target[key]}")
    if result.problems:
        return result
    if target["signatures"] != reference["signatures"]:
        result.problems.append(f"signatures {target['signatures']} differ from the export's {reference['signatures']}")
    for name, call in reference["calls"].items():
        answered = target["calls"].get(name)
        if answered is None:
            result.problems.append(f"{name}: not called")
            continue
        for output, encoded in call["outputs"].items():
            label = f"{name}.{output}"
            if output not in answered["outputs"]:
                result.problems.append(f"{label}: missing")
                continue
            expected, actual = _decode(encoded), _decode(answered["outputs"][output])
            if expected.dtype != actual.dtype or expected.shape != actual.shape:
                result.problems.append(
                    f"{label}: {actual.dtype}{list(actual.shape)}, the export {expected.dtype}{list(expected.shape)}"
                )
                continue
            if expected.dtype.name not in TOLERANCES:
                if not np.array_equal(expected, actual):
                    result.problems.append(f"{label}: differs ({int(np.sum(expected != actual))} elements)")
                continue
            absolute, relative = TOLERANCES[expected.dtype.name]
            finite = np.isfinite(expected)
            if not np.array_equal(finite, np.isfinite(actual)) or not np.array_equal(
                expected[~finite], actual[~finite]
            ):
                result.problems.append(f"{label}: infinities or NaNs differ")
                continue
            wide_expected, wide_actual = expected[finite].astype(np.float64), actual[finite].astype(np.float64)
            diff = float(np.max(np.abs(wide_expected - wide_actual), initial=0.0))
            result.max_abs_diff[label] = diff
            if not np.all(np.abs(wide_expected - wide_actual) <= absolute + relative * np.abs(wide_expected)):
                result.problems.append(
                    f"{label}: differs by up to {diff:.3g} (tolerance {absolute:g} + {relative:g}·|x|)"
                )
    generated = reference["calls"].get(GENERATE, {}).get("outputs", {}).get("text")
    answered = target["calls"].get(GENERATE, {}).get("outputs", {}).get("text")
    result.captions_identical = bool(
        generated is not None and answered is not None and np.array_equal(_decode(generated), _decode(answered))
    )
    if not result.captions_identical and not any(p.startswith(f"{GENERATE}.text") for p in result.problems):
        result.problems.append("generate.text: the captions differ")
    return result


def _targets_by_release(targets: tuple[Target, ...]) -> dict[str, list[Target]]:
    releases: dict[str, list[Target]] = {}
    for target in targets:
        releases.setdefault(target.tensorflow, []).append(target)
    return releases


def check_version(
    version_dir: Path,
    model_name: str,
    targets: tuple[Target, ...],
    checks_dir: Path,
    venv_root: Path,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Checks one version against every target release; writes and returns one record per release."""
    digest = version_digest(version_dir)
    version = int(version_dir.name)
    releases = _targets_by_release(targets)
    missing = [release for release in releases if not venv_python(venv_root, release).is_file()]
    if missing:
        raise CheckError(
            f"no environment for TensorFlow {', '.join(missing)} under {venv_root} (.venv-tf<version>/bin/python): "
            "`make serving-check` makes them"
        )
    records = []
    with tempfile.TemporaryDirectory(prefix="memefly-serving-check-") as work:
        folder = Path(work)
        photos = check_photos(folder)
        started = time.perf_counter()
        reference = run_probe(
            sys.executable, version_dir, folder / "export.json", [arg for p in photos for arg in ("--photo", str(p))]
        )
        reference_seconds = time.perf_counter() - started
        declared = export_tensorflow()
        problems = [f"{key}: {reference[key]}" for key in ("load_error", "call_error") if key in reference]
        if not reference["tensorflow"].startswith(f"{declared}."):
            problems.append(
                f"this environment runs TensorFlow {reference['tensorflow']}, not the export's {declared} "
                f"({DECLARATIONS.name})"
            )
        if problems:
            raise CheckError(
                f"{version_dir} does not load and answer TF Serving's way even with the export's own TensorFlow "
                f"{reference['tensorflow']}: {'; '.join(problems)}"
            )
        echo(
            f"{model_name} version {version} (content {digest[:12]}), written by TensorFlow "
            f"{', '.join(reference['ops']['written_by'])}: {len(reference['ops']['ops'])} op types "
            f"({sum(reference['ops']['ops'].values())} nodes) in the graph and {reference['ops']['functions']} "
            f"functions; export TensorFlow {reference['tensorflow']} answered {len(reference['calls'])} calls "
            f"in {reference_seconds:.1f} s"
        )
        for release, served_by in releases.items():
            started = time.perf_counter()
            answered = run_probe(
                venv_python(venv_root, release),
                version_dir,
                folder / f"tf-{release}.json",
                ["--inputs", str(folder / "export.json")],
            )
            seconds = time.perf_counter() - started
            comparison = compare(reference, answered)
            record = {
                "passed": comparison.passed,
                "problems": comparison.problems,
                "tensorflow": release,
                "probe_tensorflow": answered["tensorflow"],
                "targets": {target.name: target.image for target in served_by},
                "model_name": model_name,
                "version": version,
                "digest": digest,
                "written_by": reference["ops"]["written_by"],
                "export_tensorflow": reference["tensorflow"],
                "op_types": len(answered["ops"]["ops"]),
                "functions": answered["ops"]["functions"],
                "unregistered_ops": answered["ops"]["unregistered"],
                "signatures": answered.get("signatures", []),
                "calls": {name: call["signature"] for name, call in answered["calls"].items()},
                "max_abs_diff": comparison.max_abs_diff,
                "tolerances": {dtype: {"absolute": a, "relative": r} for dtype, (a, r) in TOLERANCES.items()},
                "captions_identical": comparison.captions_identical,
                "load_seconds": answered.get("load_seconds"),
                "seconds": round(seconds, 1),
                "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            path = write_record(checks_dir, record)
            worst = max(comparison.max_abs_diff.values(), default=0.0)
            verdict = "passed" if comparison.passed else "FAILED: " + "; ".join(comparison.problems)
            echo(
                f"  TensorFlow {release} ({', '.join(t.image for t in served_by)}): {verdict}. "
                f"{len(answered['ops']['ops'])} op types all registered: {not answered['ops']['unregistered']}; "
                f"{len(answered['calls'])} calls; max |diff| {worst:.2g}; captions identical: "
                f"{comparison.captions_identical}; {seconds:.1f} s -> {path}"
            )
            records.append(record)
    return records


def _versions(model_dir: Path, versions: list[int] | None) -> list[int]:
    if versions:
        return sorted(set(versions))
    found = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if not found:
        raise FileNotFoundError(f"no SavedModel version under {model_dir}: `make model` builds one")
    return [max(found)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", type=Path, default=DEFAULT_MODEL_BASE_PATH)
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--version", type=int, action="append", help="a version to check (default: the newest)")
    parser.add_argument("--checks-dir", type=Path, default=DEFAULT_CHECKS_DIR, help="where the records go")
    parser.add_argument("--venv-root", type=Path, default=REPO_ROOT, help="the folder holding .venv-tf<X.Y.Z>/")
    parser.add_argument(
        "--verify", metavar="TARGET", help="only require passing records for a target (compose, sagemaker)"
    )
    args = parser.parse_args(argv)
    model_dir = args.model_base_path / args.model_name
    try:
        versions = _versions(model_dir, args.version)
        if args.verify:
            target = serving_target(args.verify)
            digests = {v: version_digest(model_dir / str(v)) for v in versions}
            for path in require_checked(args.checks_dir, args.model_name, digests, target):
                print(f"{target.image}: {path}")
            return 0
        failed = False
        for version in versions:
            records = check_version(
                model_dir / str(version), args.model_name, serving_targets(), args.checks_dir, args.venv_root
            )
            failed |= not all(record["passed"] for record in records)
    except (CheckError, NotCheckedError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
