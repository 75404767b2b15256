"""The stand-in takes TF Serving's thread-pool flags and applies them before the model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.__main__ import parse_args
from tests.support import MODEL_NAME, free_port, serving_process, wait_for_model_status


def test_thread_pool_flags_reach_tensorflow(model_base_path: Path, tmp_path: Path) -> None:
    port = free_port()
    args = [
        f"--port={port}",
        f"--model_name={MODEL_NAME}",
        f"--model_base_path={model_base_path / MODEL_NAME}",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=2",
    ]
    log_path = tmp_path / "server.log"
    with serving_process(args, log_path) as process:
        wait_for_model_status(f"127.0.0.1:{port}", MODEL_NAME, process)
        assert "TensorFlow thread pools: intra-op 1, inter-op 2" in log_path.read_text()


def test_negative_thread_counts_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--model_base_path=/m", "--tensorflow_intra_op_parallelism=-1"])
