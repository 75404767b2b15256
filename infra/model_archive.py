"""`model.tar.gz` for AWS's TensorFlow Serving container, byte-for-byte reproducible.

Layout: `<model_name>/<version>/{saved_model.pb, variables/, assets/, assets.extra/}` for each model and
version. The container serves every `<dir>/<digits>/saved_model.pb` it finds under /opt/ml/model, named after
`<dir>`, with all its versions loaded (a `specific` version policy), and a request picks a model with the
`tfs-model-name` custom attribute: so one archive serves the GRU and the transformer side by side. A bare
`<version>/` at the root would be named `model`; a `<model_name>/` folder keeps the name the gateway asks for.

`code/inference.py` (from `infra/sagemaker_inference.py`) makes the container answer a photo posted as
`image/jpeg` with its captions. With it, the container's Python service handles every invocation, the
gateway's JSON included (which it passes through).

Fixed member metadata and gzip header make the same SavedModels give the same bytes, so the S3 key
(named by the archive's SHA-256) and everything named after it stay unchanged on a rerun.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from memefly.paths import model_versions
from memefly.serving_targets import digest_of

_SAVED_MODEL = re.compile(r"([^/]+)/(\d+)/saved_model\.pb")
_VERSION_FILE = re.compile(r"([^/]+)/(\d+)/(.+)")
INFERENCE_SCRIPT = Path(__file__).with_name("sagemaker_inference.py")
INFERENCE_SCRIPT_NAME = "code/inference.py"


@dataclass(frozen=True)
class ModelArchive:
    path: Path
    models: Mapping[str, tuple[int, ...]]
    """The versions of each model inside, by model name."""
    sha256: str

    def versions(self, model_name: str) -> tuple[int, ...]:
        return self.models.get(model_name, ())

    def describe(self) -> str:
        return "; ".join(f"{name} versions {','.join(map(str, v))}" for name, v in self.models.items())


def available_versions(model_dir: Path) -> list[int]:
    return list(model_versions(model_dir))


def newest_version(model_dir: Path) -> int:
    versions = available_versions(model_dir)
    if not versions:
        raise FileNotFoundError(f"no SavedModel version under {model_dir} (expected {model_dir}/<n>/saved_model.pb)")
    return versions[-1]


def versions_to_pack(target: int, deployed: Sequence[int], available: Sequence[int]) -> tuple[int, ...]:
    """The target version, plus the newest deployed one while gateways may still be pinned to it.

    During a blue/green shift some requests reach the new fleet; gateways pinned to the old version
    keep working only if the new archive serves it too. When the target is already the newest
    deployed version, the deployed set is kept, so a rerun builds the same archive.
    """
    if deployed and max(deployed) == target:
        return tuple(sorted({v for v in deployed if v in available} | {target}))
    keep = {max(deployed)} & set(available) if deployed else set()
    return tuple(sorted(keep | {target}))


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def build_model_archive(
    models: Mapping[Path, Sequence[int]], archive: Path, inference_script: Path | None = INFERENCE_SCRIPT
) -> ModelArchive:
    """Pack `<model_dir>/<version>/` for each model folder and version as `<model_dir.name>/<version>/...` into
    `archive`, and `inference_script` (None: none) as `code/inference.py`."""
    names = [model_dir.name for model_dir in models]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"an archive needs model folders with distinct names, got {names}")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with archive.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for model_dir in sorted(models, key=lambda d: d.name):
                _add_versions(tar, model_dir, models[model_dir])
            if inference_script is not None:
                code = Path(INFERENCE_SCRIPT_NAME).parent.as_posix()
                tar.add(inference_script.parent, arcname=code, recursive=False, filter=_normalized)
                tar.add(inference_script, arcname=INFERENCE_SCRIPT_NAME, recursive=False, filter=_normalized)
    return read_model_archive(archive)


def _add_versions(tar: tarfile.TarFile, model_dir: Path, versions: Sequence[int]) -> None:
    for version in sorted(set(versions)):
        source = model_dir / str(version)
        if not (source / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{source}/saved_model.pb not found")
        tar.add(source, arcname=f"{model_dir.name}/{version}", recursive=False, filter=_normalized)
        for path in sorted(source.rglob("*")):
            name = f"{model_dir.name}/{version}/{path.relative_to(source).as_posix()}"
            tar.add(path, arcname=name, recursive=False, filter=_normalized)


def archive_version_digests(archive: Path) -> dict[str, dict[int, str]]:
    """`memefly.serving_targets.version_digest` of each model's versions inside an archive, from its members."""
    files: dict[tuple[str, int], list[tuple[str, str]]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            match = _VERSION_FILE.fullmatch(member.name.removeprefix("./"))
            if match and member.isfile():
                content = tar.extractfile(member)
                assert content is not None
                sha = hashlib.file_digest(content, "sha256").hexdigest()
                files.setdefault((match.group(1), int(match.group(2))), []).append((match.group(3), sha))
    digests: dict[str, dict[int, str]] = {}
    for (model_name, version), entries in sorted(files.items()):
        digests.setdefault(model_name, {})[version] = digest_of(entries)
    return digests


def read_model_archive(archive: Path) -> ModelArchive:
    """The models and versions inside an archive (built here or elsewhere), and its SHA-256."""
    found: dict[str, set[int]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            match = _SAVED_MODEL.fullmatch(member.name.removeprefix("./"))
            if match:
                found.setdefault(match.group(1), set()).add(int(match.group(2)))
    if not found:
        raise ValueError(
            f"{archive}: expected <model_name>/<version>/saved_model.pb for each model, found none "
            "(a bare <version>/ at the root would be served as `model`)"
        )
    with archive.open("rb") as file:
        sha256 = hashlib.file_digest(file, "sha256").hexdigest()
    return ModelArchive(archive, {name: tuple(sorted(found[name])) for name in sorted(found)}, sha256)
