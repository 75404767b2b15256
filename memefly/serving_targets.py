"""Where the model is served, the TensorFlow each place runs, and the records that prove a model loads there.

The versions are declared once, in `serving/versions.env`: docker compose reads the same file
(`--env-file`), and so does the Makefile. TF Serving X.Y.Z is built on TensorFlow X.Y.Z, so a target's
TensorFlow is its TF Serving version. `python -m export.serving_check` (`make serving-check`) loads a
model version with each target's TensorFlow and writes a record named after the version's content digest;
`make deploy` and `make compose-up` refuse a version without a passing record for their target. Nothing
here imports TensorFlow: infra reads the records without it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memefly.paths import REPO_ROOT

DECLARATIONS = REPO_ROOT / "serving" / "versions.env"
DEFAULT_CHECKS_DIR = REPO_ROOT / "var" / "serving-checks"
COMPOSE, SAGEMAKER = "compose", "sagemaker"
_VARIABLES = {COMPOSE: "COMPOSE_TFSERVING_VERSION", SAGEMAKER: "SAGEMAKER_TFS_VERSION"}
_IMAGES = {COMPOSE: "tensorflow/serving:{}", SAGEMAKER: "tensorflow-inference:{}-cpu|gpu"}
EXPORT_VARIABLE = "EXPORT_TENSORFLOW_VERSION"
_RELEASE = re.compile(r"\d+\.\d+\.\d+")
_LINE = re.compile(r"([A-Z][A-Z0-9_]*)=(\S+)")


class NotCheckedError(Exception):
    """A model version has no passing serving check for a target's TensorFlow."""


@dataclass(frozen=True)
class Target:
    name: str
    """`compose` or `sagemaker`."""
    tensorflow: str
    """The TF Serving version of the target's image, which is the TensorFlow release it runs (X.Y.Z)."""

    @property
    def image(self) -> str:
        return _IMAGES[self.name].format(self.tensorflow)

    @property
    def variable(self) -> str:
        return _VARIABLES[self.name]


def read_declarations(path: Path = DECLARATIONS) -> dict[str, str]:
    """The KEY=VALUE lines of the declaration file; `#` comments and blank lines are skipped."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, found {raw!r}")
        values[match.group(1)] = match.group(2)
    return values


def serving_targets(path: Path = DECLARATIONS) -> tuple[Target, ...]:
    """Every declared target, each with an exact X.Y.Z release (never `latest`)."""
    values = read_declarations(path)
    targets = []
    for name, variable in _VARIABLES.items():
        version = values.get(variable)
        if version is None or not _RELEASE.fullmatch(version):
            raise ValueError(f"{path}: {variable} must name an exact TF Serving release X.Y.Z, found {version!r}")
        targets.append(Target(name, version))
    return tuple(targets)


def serving_target(name: str, path: Path = DECLARATIONS) -> Target:
    for target in serving_targets(path):
        if target.name == name:
            return target
    raise ValueError(f"no target {name!r}: the targets are {', '.join(_VARIABLES)}")


def export_tensorflow(path: Path = DECLARATIONS) -> str:
    """The TensorFlow release (X.Y) the export writes SavedModels with."""
    version = read_declarations(path).get(EXPORT_VARIABLE)
    if version is None or not re.fullmatch(r"\d+\.\d+", version):
        raise ValueError(f"{path}: {EXPORT_VARIABLE} must name a TensorFlow release X.Y, found {version!r}")
    return version


def digest_of(files: Iterable[tuple[str, str]]) -> str:
    """One SHA-256 for a model version from its (relative path, file SHA-256) pairs, in any order."""
    lines = "".join(f"{name}\t{sha}\n" for name, sha in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def version_digest(version_dir: Path) -> str:
    """The content digest of `<model>/<version>/`: every file under it, by relative path and content."""
    files = []
    for path in sorted(version_dir.rglob("*")):
        if path.is_file():
            with path.open("rb") as file:
                files.append(
                    (path.relative_to(version_dir).as_posix(), hashlib.file_digest(file, "sha256").hexdigest())
                )
    if not files:
        raise FileNotFoundError(f"{version_dir}: no files")
    return digest_of(files)


def record_path(checks_dir: Path, digest: str, tensorflow: str) -> Path:
    return checks_dir / digest / f"tensorflow-{tensorflow}.json"


def write_record(checks_dir: Path, record: dict[str, Any]) -> Path:
    """Writes a check's record; `record` carries at least `digest`, `tensorflow` and `passed`."""
    path = record_path(checks_dir, record["digest"], record["tensorflow"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def require_checked(
    checks_dir: Path, model_name: str, digests: dict[int, str], target: Target, how: str = "make serving-check"
) -> list[Path]:
    """The passing records of every version for `target`; `NotCheckedError` naming what is missing."""
    found, problems = [], []
    for version, digest in sorted(digests.items()):
        path = record_path(checks_dir, digest, target.tensorflow)
        label = f"{model_name} version {version} (content {digest[:12]})"
        if not path.is_file():
            problems.append(f"{label} has not been checked with TensorFlow {target.tensorflow}")
            continue
        record = json.loads(path.read_text())
        if record.get("passed") is not True or record.get("digest") != digest:
            problems.append(f"{label} failed the check with TensorFlow {target.tensorflow}: see {path}")
            continue
        found.append(path)
    if problems:
        raise NotCheckedError(
            f"refused: the {target.name} target runs {target.image} ({target.variable}={target.tensorflow} in "
            f"{DECLARATIONS.relative_to(REPO_ROOT)}), and "
            + "; ".join(problems)
            + f". Run `{how}` to load it with TensorFlow {target.tensorflow} and call every signature "
            f"(records in {checks_dir})."
        )
    return found
