"""Every export carries TF Serving warm-up records: one request for each signature, all of which run."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import model_pb2, prediction_log_pb2

from export.warmup import WARMUP_FILE
from infra.model_archive import build_model_archive
from memefly.contract import ENCODE, METADATA, ModelContract, signatures
from serving.model_config import single_model_config
from serving.model_store import ModelStore
from serving.warmup import WarmupOptions
from tests.support import MODEL_NAME


@pytest.fixture(scope="module")
def version_dir(model_base_path: Path) -> Path:
    return model_base_path / MODEL_NAME / "1"


@pytest.fixture(scope="module")
def records(version_dir: Path) -> list[prediction_log_pb2.PredictionLog]:
    logs = []
    for record in tf.data.TFRecordDataset(str(version_dir / WARMUP_FILE)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        logs.append(log)
    return logs


def test_each_signature_has_one_predict_record_that_runs_on_the_loaded_model(
    version_dir: Path, records: list[prediction_log_pb2.PredictionLog]
) -> None:
    loaded = tf.saved_model.load(str(version_dir))
    contract = ModelContract.from_json(loaded.signatures[METADATA]()["contract"].numpy())
    specs = {spec.name: spec for spec in signatures(contract)}

    assert [log.WhichOneof("log_type") for log in records] == ["predict_log"] * len(records)
    requests = [log.predict_log.request for log in records]
    assert sorted(request.model_spec.signature_name for request in requests) == sorted(specs)
    for request in requests:
        spec = specs[request.model_spec.signature_name]
        assert set(request.inputs) == {tensor.name for tensor in spec.inputs}
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        outputs = loaded.signatures[spec.name](**inputs)
        assert set(outputs) == {tensor.name for tensor in spec.outputs}


def test_the_encode_record_sends_a_real_jpeg(records: list[prediction_log_pb2.PredictionLog]) -> None:
    requests = [log.predict_log.request for log in records]
    (encode,) = [request for request in requests if request.model_spec.signature_name == ENCODE]
    (jpeg,) = tf.make_ndarray(encode.inputs["image_bytes"])

    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_the_serving_stand_in_replays_every_record_when_it_loads_the_version(model_base_path: Path) -> None:
    store = ModelStore(warmup=WarmupOptions(enabled=True))
    store.apply_config(single_model_config(MODEL_NAME, model_base_path / MODEL_NAME))

    assert store.available_versions(MODEL_NAME) == [1]
    version = store.resolve(model_pb2.ModelSpec(name=MODEL_NAME))
    contract = ModelContract.from_json(version.run_signature(METADATA, {})["contract"])
    calls = Counter(version.signature_calls)
    calls[METADATA] -= 1  # the call just made
    assert calls == Counter({spec.name: 1 for spec in signatures(contract)})


def test_the_sagemaker_model_archive_packs_the_warmup_records(model_base_path: Path, tmp_path: Path) -> None:
    archive = build_model_archive({model_base_path / MODEL_NAME: [1]}, tmp_path / "model.tar.gz")

    with tarfile.open(archive.path) as tar:
        names = set(tar.getnames())
        packed = tar.extractfile(f"{MODEL_NAME}/1/{WARMUP_FILE.as_posix()}").read()
    assert {f"{MODEL_NAME}/1/saved_model.pb", f"{MODEL_NAME}/1/variables/variables.index"} <= names
    assert {f"{MODEL_NAME}/1/assets", f"{MODEL_NAME}/1/assets.extra"} <= names
    assert packed == (model_base_path / MODEL_NAME / "1" / WARMUP_FILE).read_bytes()
