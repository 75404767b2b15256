"""The floor under every Predict call to the local stand-in: a gRPC round trip between two Python processes.

A server process answers PredictionService.Predict with a fixed response the size of a beam-5 `decode_step`
answer, doing nothing else (or sleeping, with the GIL released, as long as a model step takes). The client
sends a request of that step's size, one call after another, optionally pausing between calls as the search
does. Whatever the time per call exceeds the handler's own time is transport: grpcio's Python server and
client, the loopback socket, and the threads waking each other. The stand-in cannot go below it, however
little its handler does; tensorflow_model_server's C++ server does not pay it.

    python -m bench.grpc_floor                      # the table for this machine
    python -m bench.grpc_floor --serve PORT         # (internal) the answering process
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent import futures

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bench.serving_tier import free_port
from gateway.tensors import array_to_proto
from memefly.paths import DEFAULT_MODEL_NAME

BEAMS = 5
STATE_SIZE = 256
CONTEXT_SIZE = 128
TOP_K = 10
CALLS = 1000


def step_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = DEFAULT_MODEL_NAME
    request.model_spec.signature_name = "decode_step"
    inputs = {
        "tokens": np.ones(BEAMS, np.int32),
        "state": np.zeros((BEAMS, STATE_SIZE), np.float16),
        "context": np.zeros((1, CONTEXT_SIZE), np.float32),
        "context_index": np.zeros(BEAMS, np.int32),
        "k": np.int32(TOP_K),
    }
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(array_to_proto(array))
    return request


def step_response() -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    outputs = {
        "top_log_probs": np.zeros((BEAMS, TOP_K), np.float32),
        "top_ids": np.zeros((BEAMS, TOP_K), np.int32),
        "state": np.zeros((BEAMS, STATE_SIZE), np.float16),
    }
    for name, array in outputs.items():
        response.outputs[name].CopyFrom(array_to_proto(array))
    return response


class _FixedAnswer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self) -> None:
        self.response = step_response()

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:  # noqa: E501
        # How long to hold, in microseconds: carried in the version field, which nothing else reads here.
        hold = request.model_spec.version.value / 1e6
        if hold:
            time.sleep(hold)
        return self.response


def serve(port: int) -> None:
    """The answering process: grpcio's sync server with a thread pool, as the stand-in builds it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_FixedAnswer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _sleep_ms(hold_ms: float, samples: int = 200) -> float:
    """What `time.sleep(hold_ms)` really takes here (the handler's own time)."""
    if not hold_ms:
        return 0.0
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        time.sleep(hold_ms / 1000)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def round_trips(target: str, hold_ms: float, pause_ms: float, calls: int = CALLS) -> dict[str, float]:
    """Median and mean ms per call, and the transport's share: per call minus the handler's own sleep."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
    request = step_request()
    request.model_spec.version.value = int(hold_ms * 1000)
    for _ in range(100):
        stub.Predict(request, timeout=10)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.Predict(request, timeout=10)
        times.append(time.perf_counter() - started)
        if pause_ms:  # the search's work between steps: busy, holding the GIL
            until = time.perf_counter() + pause_ms / 1000
            while time.perf_counter() < until:
                pass
    median = 1000 * statistics.median(times)
    return {
        "hold_ms": hold_ms,
        "pause_ms": pause_ms,
        "median_ms": median,
        "mean_ms": 1000 * statistics.mean(times),
        "transport_ms": median - _sleep_ms(hold_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hold-ms", type=float, default=1.2, help="the handler's sleep, as a model step")
    parser.add_argument("--pause-ms", type=float, default=0.3, help="the client's work between calls")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--serve", str(port)])
    try:
        grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=60)
        print("| handler | client between calls | ms per call (median) | of which transport |")
        print("| --- | --- | --- | --- |")
        for hold, pause in ((0.0, 0.0), (args.hold_ms, 0.0), (args.hold_ms, args.pause_ms)):
            row = round_trips(f"127.0.0.1:{port}", hold, pause)
            handler = f"sleeps {hold:g} ms" if hold else "returns at once"
            between = f"busy {pause:g} ms" if pause else "nothing (back to back)"
            print(f"| {handler} | {between} | {row['median_ms']:.2f} | {row['transport_ms']:.2f} |")
    finally:
        process.terminate()
        process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
