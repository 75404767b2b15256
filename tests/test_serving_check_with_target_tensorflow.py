"""The serving check, run for real: the target releases' TensorFlow in their own environments
(`.venv-tf<X.Y.Z>`, made by `make serving-venvs`, which `make test` runs first).

The tiny model passes for every declared target and `plan` then accepts it; an op newer than a target's
release, and variables that only the object graph restores, each fail the check as they fail TF Serving.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from export.serving_check import compare, run_probe, venv_python
from export.serving_check import main as serving_check
from export.serving_probe import encode_tensor
from infra.__main__ import app
from memefly.contract import ModelContract, signatures
from memefly.paths import REPO_ROOT
from memefly.serving_targets import SAGEMAKER, serving_target, serving_targets, version_digest
from tests.support import MODEL_NAME
from tests.test_deploy_support import deploy_environment, moto_on_loopback

RELEASES = sorted({target.tensorflow for target in serving_targets()})


def target_python(release: str) -> Path:
    python = venv_python(REPO_ROOT, release)
    assert python.is_file(), f"{python} missing: `make serving-venvs` makes it"
    return python


def test_the_tiny_model_passes_for_every_target_and_deploy_plan_accepts_it(
    model_base_path: Path, tmp_path: Path
) -> None:
    checks = tmp_path / "checks"
    args = ["--model-base-path", str(model_base_path), "--model-name", MODEL_NAME, "--checks-dir", str(checks)]
    assert serving_check([*args, "--verify", "compose"]) == 1  # not checked yet

    assert serving_check(args) == 0

    version_dir = model_base_path / MODEL_NAME / "1"
    contract = ModelContract.from_json(
        tf.saved_model.load(str(version_dir)).signatures["metadata"]()["contract"].numpy()
    )
    for release in RELEASES:
        record = json.loads((checks / version_digest(version_dir) / f"tensorflow-{release}.json").read_text())
        assert record["passed"] and record["problems"] == [], record["problems"]
        assert record["probe_tensorflow"] == release
        assert record["captions_identical"]
        assert set(record["calls"].values()) == {spec.name for spec in signatures(contract)}
        assert record["unregistered_ops"] == [] and record["op_types"] > 20
        assert set(record["targets"]) == {t.name for t in serving_targets() if t.tensorflow == release}
    assert serving_check([*args, "--verify", "compose"]) == 0
    with moto_on_loopback():
        result = CliRunner().invoke(
            app, ["plan"], env=deploy_environment(model_base_path, serving_checks_dir=checks, model_name=MODEL_NAME)
        )
    assert result.exit_code == 0, result.output
    assert f"passed the serving check with TensorFlow {serving_target(SAGEMAKER).tensorflow}" in result.output


def _save(module: tf.Module, folder: Path, function: tf.types.experimental.PolymorphicFunction) -> Path:
    tf.saved_model.save(module, str(folder), signatures={"run": function})
    return folder


def _replay(folder: Path, inputs: dict[str, np.ndarray]) -> Path:
    path = folder / "inputs.json"
    calls = {"run": {"signature": "run", "inputs": {k: encode_tensor(v) for k, v in inputs.items()}}}
    path.write_text(json.dumps({"calls": calls}))
    return path


@pytest.mark.parametrize("release", RELEASES)
def test_an_op_newer_than_the_target_release_fails_to_load_there(tmp_path: Path, release: str) -> None:
    # DecodeWebP is registered in TensorFlow 2.21, not in 2.19: a model using it loads with the export's TF only.
    module = tf.Module()
    module.run = tf.function(
        lambda image: {"pixels": tf.io.decode_webp(image[0])}, input_signature=[tf.TensorSpec([None], tf.string)]
    )
    saved = _save(module, tmp_path / "webp", module.run)
    webp = tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)).numpy()  # the op runs only if it loads
    inputs = _replay(tmp_path, {"image": np.array([webp], dtype=object)})

    export = run_probe(sys.executable, saved, tmp_path / "export.json", ["--inputs", str(inputs)])
    target = run_probe(target_python(release), saved, tmp_path / "target.json", ["--inputs", str(inputs)])

    assert "DecodeWebP" in export["ops"]["ops"] and export["ops"]["unregistered"] == []
    assert "load_error" not in export
    assert target["ops"]["unregistered"] == ["DecodeWebP"]
    assert "Op type not registered 'DecodeWebP'" in target["load_error"]
    assert compare(export, target).problems[0] == "ops not registered in this release: DecodeWebP"


def test_keras_variables_restored_only_by_the_object_graph_fail_as_in_tf_serving(tmp_path: Path) -> None:
    # The export's bug before serving_variables(): a Keras layer tracked as usual; tf.saved_model.load
    # answers, a graph-and-session load (TF Serving's, and the probe's) reads variables nothing restored.
    module = tf.Module()
    module.layer = keras.layers.Dense(2, kernel_initializer="ones")
    module.layer.build((None, 3))
    module.run = tf.function(lambda x: {"y": module.layer(x)}, input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    saved = _save(module, tmp_path / "keras", module.run)
    x = np.ones((1, 3), np.float32)
    inputs = _replay(tmp_path, {"x": x})

    assert np.array_equal(tf.saved_model.load(str(saved)).signatures["run"](x=x)["y"], [[3.0, 3.0]])
    result = run_probe(sys.executable, saved, tmp_path / "export.json", ["--inputs", str(inputs)])

    assert "Could not find variable" in result["call_error"]
