"""The local serving tier (`python -m serving`, as `make serve-local` runs it) as a subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memefly.paths import REPO_ROOT

STARTUP_SECONDS = 120.0
INTRA_OP_THREADS = 1
INTER_OP_THREADS = 3
"""One thread per op, and as many ops at once as the gateway has calls in flight: its `decode_step` and
two `encode` calls (`MEMEFLY_ENCODE_CALLS_IN_FLIGHT`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_available(target: str, model_name: str, process: subprocess.Popen | None, timeout: float) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the serving tier exited with {process.returncode}")
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = model_name
            try:
                statuses = stub.GetModelStatus(request, timeout=2).model_version_status
                if any(status.state == available for status in statuses):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise TimeoutError(f"the serving tier at {target} had no available model after {timeout:.0f} s")


@contextmanager
def local_serving_tier(
    model_base_path: Path, model_name: str, log_path: Path, rest_api_port: int | None = None
) -> Iterator[tuple[str, int]]:
    """(gRPC target, process id) of a fresh `python -m serving` for `<model_base_path>/<model_name>`, with
    its REST API on `rest_api_port` if one is given (it is up once the model is: both open together)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "serving",
        f"--port={port}",
        f"--model_name={model_name}",
        f"--model_base_path={(model_base_path / model_name).resolve()}",
        # On 2 CPUs shared with the gateway, several threads per op spend each step waking each other,
        # and one op at a time makes a decode step wait behind a whole encode (README, "make bench").
        f"--tensorflow_intra_op_parallelism={INTRA_OP_THREADS}",
        f"--tensorflow_inter_op_parallelism={INTER_OP_THREADS}",
        # As docker-compose.yml runs TF Serving: answers as packed bytes, not one varint per float16.
        "--enable_serialization_as_tensor_content=true",
    ]
    if rest_api_port is not None:
        args.append(f"--rest_api_port={rest_api_port}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        target = f"127.0.0.1:{port}"
        wait_until_available(target, model_name, process, STARTUP_SECONDS)
        yield target, process.pid
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
