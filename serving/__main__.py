"""A local stand-in for tensorflow_model_server, for machines without Docker.

This is NOT TensorFlow Serving. It speaks TF Serving's gRPC API (PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus) with its status codes and messages, and loads
the same ``<model_base_path>/<version>/saved_model.pb`` layout, serving the latest version and
picking up new ones. It has no REST API, batching, model config file, Classify/Regress/
MultiInference or monitoring; use the real server (tensorflow/serving image) for anything else.

    python -m serving --port 8500 --model_name NAME --model_base_path PATH
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

SHUTDOWN_GRACE_SECONDS = 5.0

log = logging.getLogger("serving")


def _flag_bool(text: str) -> bool:
    # TF Serving's flags take --name=true / --name=false.
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Local stand-in for tensorflow_model_server (gRPC only). Flag names as TF Serving's.",
    )
    parser.add_argument("--port", type=int, default=8500, help="TCP port for the gRPC API")
    parser.add_argument("--model_name", default="default", help="name clients put in ModelSpec.name")
    parser.add_argument("--model_base_path", required=True, help="directory of numeric version dirs")
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=int,
        default=1,
        help="seconds between polls for new versions; 0 polls only once, at start-up",
    )
    parser.add_argument(
        "--grpc_max_threads",
        type=int,
        default=4 * (os.cpu_count() or 1),
        help="gRPC worker threads (TF Serving's default: 4 per CPU)",
    )
    parser.add_argument(
        "--enable_serialization_as_tensor_content",
        type=_flag_bool,
        nargs="?",
        const=True,
        default=False,
        help="send Predict outputs as tensor_content instead of typed *_val fields",
    )
    args = parser.parse_args(argv)
    if args.port <= 0:
        parser.error("--port must be positive: this stand-in serves gRPC only")
    if args.grpc_max_threads <= 0:
        parser.error("--grpc_max_threads must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported after argument parsing so that --help and flag errors do not wait for TensorFlow.
    from serving.grpc_server import build_server
    from serving.model_store import ModelStore, poll_forever

    store = ModelStore({args.model_name: args.model_base_path})
    store.poll()
    versions = store.available_versions(args.model_name)
    if not versions:
        # tensorflow_model_server exits when its version fails to load, but with no version on disk
        # at all it waits forever without opening its port; exiting is clearer here in both cases.
        log.error("No loadable version of model %s under %s", args.model_name, args.model_base_path)
        return 1

    as_content = args.enable_serialization_as_tensor_content
    try:
        server = build_server(store, args.port, args.grpc_max_threads, as_content)
    except RuntimeError as exc:  # gRPC's way of saying the port is taken
        log.error("Cannot listen on port %d: %s", args.port, exc)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    if args.file_system_poll_wait_seconds > 0:
        threading.Thread(
            target=poll_forever,
            args=(store, args.file_system_poll_wait_seconds, stop),
            name="file-system-poll",
            daemon=True,
        ).start()
    log.info("Serving model %s versions %s on port %d", args.model_name, versions, args.port)

    stop.wait()
    log.info("Shutting down; in-flight requests get %.0f s", SHUTDOWN_GRACE_SECONDS)
    server.stop(SHUTDOWN_GRACE_SECONDS).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
