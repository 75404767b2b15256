"""The `memefly` command on a checkout without the caption corpus: templates come from the shipped folder,
and training, evaluation and building a model from a preset stop with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from gateway.templates import shipped_templates_dir


def test_templates_lists_the_shipped_ids_and_names_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMEFLY_DATA_DIR", raising=False)
    monkeypatch.delenv("MEMEFLY_TEMPLATES_DIR", raising=False)
    shipped = json.loads((shipped_templates_dir() / "templates.json").read_text(encoding="utf-8"))
    result = CliRunner().invoke(app, ["templates"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == sorted(t["id"] for t in shipped)
    assert any(line.startswith("drake\t") for line in lines)


@pytest.mark.parametrize("command", [["train", "--preset", "tiny"], ["evaluate"], ["build-model", "--preset", "tiny"]])
def test_training_and_evaluation_stop_with_a_clear_message_without_the_corpus(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "memes"
    empty.mkdir()
    (empty / "templates.json").write_text("[]", encoding="utf-8")  # templates but no caption corpus
    monkeypatch.setenv("MEMEFLY_DATA_DIR", str(empty))
    result = CliRunner().invoke(app, [*command, "--bundle-dir" if command[0] != "build-model" else "--model-base-path",
                                      str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "captions.jsonl.gz" in result.output and "make data" in result.output
    assert not (tmp_path / "out").exists()


def test_training_refuses_an_empty_corpus(tmp_path: Path) -> None:
    import gzip

    from export.data import DataMissingError
    from export.train import PRESETS, training_split

    folder = tmp_path / "memes"
    folder.mkdir()
    (folder / "templates.json").write_text("[]", encoding="utf-8")
    with gzip.open(folder / "captions.jsonl.gz", "wt", encoding="utf-8"):
        pass
    model_config, train_config = PRESETS["tiny"]
    with pytest.raises(DataMissingError, match="no captions to train on"):
        training_split(folder, model_config, train_config)
