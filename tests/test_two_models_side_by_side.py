"""Two models served side by side, a GRU and a transformer, each with its own session and batches: a request
names one (by name or decoder, in the body or a header), or the traffic split picks one; metrics count each."""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from infra.model_archive import build_model_archive
from tests.support import MODEL_NAME, TRANSFORMER_MODEL_NAME, embedded_settings

JSON = {"Accept": "application/json"}


def _model_of(client: TestClient, chelsea_jpeg: bytes, headers: dict | None = None, **fields: str) -> str:
    files = {"image": ("c.jpg", chelsea_jpeg, "image/jpeg")}
    response = client.post("/v1/memes", files=files, data={"n": "1", **fields}, headers={**JSON, **(headers or {})})
    assert response.status_code == 200, response.text
    return response.json()["model"]["name"]


def test_a_request_picks_its_model_by_name_decoder_or_header(
    two_models: Path, tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    settings = embedded_settings(two_models, tmp_path, models=[TRANSFORMER_MODEL_NAME])
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["models"] == {MODEL_NAME: 1, TRANSFORMER_MODEL_NAME: 1}
        assert _model_of(client, chelsea_jpeg) == MODEL_NAME
        assert _model_of(client, chelsea_jpeg, model="transformer") == TRANSFORMER_MODEL_NAME
        assert _model_of(client, chelsea_jpeg, model="gru") == MODEL_NAME
        assert _model_of(client, chelsea_jpeg, model=TRANSFORMER_MODEL_NAME) == TRANSFORMER_MODEL_NAME
        assert _model_of(client, chelsea_jpeg, {"X-Memefly-Model": "transformer"}) == TRANSFORMER_MODEL_NAME
        assert _model_of(client, chelsea_jpeg, {"X-Memefly-Model": "transformer"}, model="gru") == MODEL_NAME
        template = client.post("/v1/templates/drake/memes", json={"model": "transformer"}, headers=JSON).json()
        assert template["model"]["name"] == TRANSFORMER_MODEL_NAME
        unknown = client.post(
            "/v1/memes", files={"image": ("c.jpg", chelsea_jpeg, "image/jpeg")}, data={"model": "lstm"}
        )
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_model"
        assert "memefly-transformer" in unknown.json()["error"]["message"]


def test_the_traffic_split_sends_requests_to_both_models_and_metrics_count_each(
    two_models: Path, tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    settings = embedded_settings(
        two_models,
        tmp_path,
        models=[TRANSFORMER_MODEL_NAME],
        model_traffic={MODEL_NAME: 50, TRANSFORMER_MODEL_NAME: 50},
    )
    with TestClient(create_app(settings)) as client:
        served = Counter(_model_of(client, chelsea_jpeg) for _ in range(16))
        metrics = client.get("/metrics").text
    # 16 fair draws all landing on one side happen with probability 2 × 2⁻¹⁶.
    assert set(served) == {MODEL_NAME, TRANSFORMER_MODEL_NAME}, served
    for model, count in served.items():
        assert f'memefly_memes_generated_total{{backend="embedded",model="{model}"}} {float(count)}' in metrics


def test_a_traffic_split_naming_a_model_not_served_stops_start_up(two_models: Path, tmp_path: Path) -> None:
    settings = embedded_settings(two_models, tmp_path, model_traffic={TRANSFORMER_MODEL_NAME: 100})
    with pytest.raises(ValueError, match="not served"), TestClient(create_app(settings)):
        pass


def test_explain_returns_each_words_attention_over_the_photo_and_costs_one_call_only_when_asked(
    two_models: Path, tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    settings = embedded_settings(two_models, tmp_path, models=[TRANSFORMER_MODEL_NAME])
    files = {"image": ("c.jpg", chelsea_jpeg, "image/jpeg")}
    with TestClient(create_app(settings)) as client:
        plain = client.post("/v1/memes", files=files, data={"model": "transformer"}, headers=JSON).json()
        explained = client.post(
            "/v1/memes", files=files, data={"model": "transformer", "explain": "true"}, headers=JSON
        ).json()
        refused = client.post("/v1/memes", files=files, data={"model": "gru", "explain": "true"}, headers=JSON)
    assert all(caption["attention"] is None for caption in plain["captions"])
    assert explained["rpcs"] == plain["rpcs"] + 1
    assert [c["text"] for c in explained["captions"]] == [c["text"] for c in plain["captions"]]
    for caption in explained["captions"]:
        words = [pair["word"] for pair in caption["attention"]]
        assert words and " ".join(words) == " ".join(caption["text"].replace(" / ", " ").split())
        for pair in caption["attention"]:
            assert len(pair["weights"]) == 49 and abs(sum(pair["weights"]) - 1) < 1e-2
            assert min(pair["weights"]) >= 0
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unsupported_by_model"


@pytest.mark.parametrize("backend", ["tfserving", "sagemaker"])
def test_one_serving_tier_serves_both_models_from_a_models_config_each_with_its_own_version_policy(
    backend: str, two_models: Path, tmp_path: Path, chelsea_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As compose runs TF Serving, and as the SageMaker container does with both models in its archive: one
    `models.config` naming both; the gateway keeps one session per model over the same serving tier (on
    SageMaker, one endpoint whose `tfs-model-name` attribute picks the model)."""
    from tests.support import free_port, serving_process, wait_for_model_status

    root = two_models
    if backend == "sagemaker":
        # What the endpoint serves: the archive `make deploy` builds, unpacked as SageMaker does into /opt/ml/model.
        packs = {two_models / MODEL_NAME: [1], two_models / TRANSFORMER_MODEL_NAME: [1]}
        archive = build_model_archive(packs, tmp_path / "model.tar.gz", inference_script=None)
        root = tmp_path / "opt-ml-model"
        with tarfile.open(archive.path) as tar:
            tar.extractall(root, filter="data")
    config = tmp_path / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{ name: "{MODEL_NAME}" base_path: "{root / MODEL_NAME}" model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 1 }} }} }}
  config {{ name: "{TRANSFORMER_MODEL_NAME}" base_path: "{root / TRANSFORMER_MODEL_NAME}"
    model_platform: "tensorflow" model_version_policy {{ specific {{ versions: 1 }} }} }}
}}
"""
    )
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    port, sagemaker_port = free_port(), free_port()
    args = [f"--port={port}", f"--sagemaker_port={sagemaker_port}", f"--model_config_file={config}"]
    with serving_process(args, tmp_path / "serving.log") as process:
        target = f"127.0.0.1:{port}"
        for name in (MODEL_NAME, TRANSFORMER_MODEL_NAME):
            wait_for_model_status(target, name, process)
        tier = (
            {"tfserving_target": target}
            if backend == "tfserving"
            else {
                "sagemaker_endpoint_url": f"http://127.0.0.1:{sagemaker_port}",
                "sagemaker_region": "us-east-1",
                # REST answers do not say which version answered: the deploy pins each model's.
                "sagemaker_model_versions": {MODEL_NAME: 1, TRANSFORMER_MODEL_NAME: 1},
            }
        )
        settings = Settings(
            backend=backend,
            model_name=MODEL_NAME,
            models=[TRANSFORMER_MODEL_NAME],
            meme_store_dir=tmp_path,
            **tier,
        )
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").json()["models"] == {MODEL_NAME: 1, TRANSFORMER_MODEL_NAME: 1}
            assert _model_of(client, chelsea_jpeg) == MODEL_NAME
            assert _model_of(client, chelsea_jpeg, model="transformer") == TRANSFORMER_MODEL_NAME
            listed = client.get("/v1/models").json()
    assert [(m["name"], m["decoder"], m["default"], m["explains"]) for m in listed] == [
        (MODEL_NAME, "gru", True, False),
        (TRANSFORMER_MODEL_NAME, "transformer", False, True),
    ]
