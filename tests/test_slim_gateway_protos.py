"""The gateway runs without TensorFlow: its tfserving backend needs only the copied generated protos.

`python -m gateway.protos DIR` is what the Dockerfile's builder stage runs. Here a subprocess whose
import system finds `tensorflow` and `tensorflow_serving` only in that copy (as in the slim image,
where they are not installed) drives the tfserving backend against the local serving tier.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.protos import copy_protos, gateway_protos
from memefly.paths import REPO_ROOT
from tests.support import MODEL_NAME

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]

# Run in the subprocess: argv = protos directory, TF Serving target, model name, JPEG path.
SLIM_GATEWAY = r"""
import importlib.machinery
import json
import sys
from pathlib import Path

protos, target, model_name, jpeg = sys.argv[1:5]
TENSORFLOW = {"tensorflow", "tensorflow_serving"}


class OnlyTheCopiedProtos:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in TENSORFLOW:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [protos] if path is None else path)
        if spec is None or not (spec.origin or "").startswith(protos):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return spec


sys.meta_path.insert(0, OnlyTheCopiedProtos())

import numpy as np

from gateway.backends.tfserving import TfServingBackend

backend = TfServingBackend(target, model_name, 60)
info = backend.load_metadata()
context = backend.encode([Path(jpeg).read_bytes()])
beams = 2
step = backend.decode_step(
    np.full(beams, info.contract.start_id), np.zeros((beams, info.contract.state_size), np.float32), context,
    np.zeros(beams, np.int32), 3,
)
version = backend.available_version()
backend.close()
loaded = sorted(name for name in sys.modules if name.partition(".")[0] in TENSORFLOW | {"keras"})
print(json.dumps({
    "version": version,
    "vocabulary": len(info.vocabulary),
    "context": context.tolist(),
    "top_ids": step.top_ids.tolist(),
    "outside_the_copy": [name for name in loaded if not (sys.modules[name].__file__ or "").startswith(protos)],
    "loaded": loaded,
}))
"""


def test_the_copy_holds_what_the_gateway_imports_and_their_imports(tmp_path: Path) -> None:
    copied = copy_protos(tmp_path)

    assert gateway_protos() <= set(copied)
    assert {"tensorflow_serving.apis.predict_pb2", "tensorflow.core.framework.tensor_pb2"} <= set(copied)
    assert "tensorflow.core.framework.types_pb2" in copied, "tensor_pb2 imports it"
    files = {path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.py")}
    assert {name for name in files if not name.endswith("__init__.py")} == {
        name.replace(".", "/") + ".py" for name in copied
    }
    assert all((tmp_path / name).read_text() == "" for name in files if name.endswith("__init__.py"))


def test_the_tfserving_backend_works_with_only_the_copied_protos(
    tmp_path: Path, serving_target: str, chelsea_jpeg: bytes
) -> None:
    from gateway.backends.tfserving import TfServingBackend

    protos = tmp_path / "protos"
    copy_protos(protos)
    (tmp_path / "photo.jpg").write_bytes(chelsea_jpeg)
    argv = [str(protos), serving_target, MODEL_NAME, str(tmp_path / "photo.jpg")]
    run = subprocess.run(
        [sys.executable, "-c", SLIM_GATEWAY, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    slim = json.loads(run.stdout)

    assert slim["outside_the_copy"] == [] and "tensorflow_serving.apis.predict_pb2" in slim["loaded"]
    assert not any(name.startswith(("tensorflow.python", "keras")) for name in slim["loaded"])
    with_tensorflow = TfServingBackend(serving_target, MODEL_NAME, 60)
    try:
        assert slim["version"] == with_tensorflow.available_version()
        assert slim["vocabulary"] == len(with_tensorflow.load_metadata().vocabulary)
        np.testing.assert_array_equal(np.float32(slim["context"]), with_tensorflow.encode([chelsea_jpeg]))
    finally:
        with_tensorflow.close()
    assert np.array(slim["top_ids"]).shape == (2, 3)


def _names(requirements: list[str], extra: str = "") -> set[str]:
    return {
        canonicalize_name(req.name)
        for req in map(Requirement, requirements)
        if req.marker is None or req.marker.evaluate({"extra": extra})
    }


def installed_closure(names: set[str]) -> set[str]:
    """`names` and everything they require, transitively, as installed here (extras not taken)."""
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            pending.extend(_names(requires(name) or []) - seen)
        except PackageNotFoundError:
            continue
    return seen


def test_the_base_install_pulls_in_no_tensorflow() -> None:
    base = installed_closure(_names(PYPROJECT["dependencies"]))

    assert {"fastapi", "grpcio", "protobuf", "numpy"} <= base
    assert not {name for name in base if name.startswith(("tensorflow", "keras"))}


@pytest.mark.parametrize(
    ("extra", "needs"),
    [
        ("tfserving-protos", {"tensorflow-serving-api"}),
        ("embedded", {"tensorflow"}),
        ("serving", {"tensorflow", "tensorflow-serving-api"}),
        ("train", {"tensorflow", "tensorflow-serving-api"}),
        ("dev", {"tensorflow-serving-api", "pyyaml"}),
    ],
)
def test_the_extras_that_need_tensorflow_still_bring_it(extra: str, needs: set[str]) -> None:
    assert needs <= _names(PYPROJECT["optional-dependencies"][extra])


def test_the_dockerfile_installs_the_gateway_without_tensorflow_and_copies_the_protos_in() -> None:
    stages = re.split(r"^FROM ", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M)[1:]
    builder, final = stages[0], stages[-1]
    builder_name = re.match(r"\S+ AS (\S+)", builder).group(1)
    copied_to = re.search(r"python -m gateway\.protos (\S+)", builder).group(1)

    assert "tfserving-protos" in builder
    assert "tensorflow" not in "\n".join(line for line in final.splitlines() if line.startswith("RUN"))
    extras = re.search(r'pip install [^"]*"\.\[([^\]]*)\]"', final).group(1).split(",")
    installed = installed_closure(set().union(*(_names(PYPROJECT["optional-dependencies"][e]) for e in extras)))
    assert installed.isdisjoint({"tensorflow", "tensorflow-serving-api", "sagemaker-core"})  # the deploy extra's
    destination = re.search(rf"COPY --from={builder_name} {copied_to} (\S+)", final).group(1)
    assert re.search(rf"PYTHONPATH={destination}(\s|$)", final)
    user = re.search(r"^USER (\S+)", final, re.M).group(1)
    assert user not in ("root", "0")
