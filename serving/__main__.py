"""A local stand-in for tensorflow_model_server, for machines without Docker.

This is NOT TensorFlow Serving. It loads the same ``<base_path>/<version>/saved_model.pb``
directories and takes TF Serving's flags where they apply, and answers with TF Serving's status
codes, messages and JSON layout:

- gRPC (``--port``): PredictionService.Predict and GetModelMetadata, ModelService.GetModelStatus
  and HandleReloadConfigRequest. Classify, Regress and MultiInference answer UNIMPLEMENTED.
- REST (``--rest_api_port``, off at 0 as in TF Serving): model status, metadata and ``:predict``.
- Models from ``--model_name``/``--model_base_path`` or ``--model_config_file`` (several models,
  version policies, version labels), polled for new versions and, optionally, for config changes.
- ``--enable_batching`` with ``--batching_parameters_file``; SavedModel warm-up requests.
- ``--sagemaker_port`` (our own flag): the SageMaker TF Serving container's /ping and /invocations,
  and SageMaker Runtime's /endpoints/{name}/invocations.

There is no monitoring, TLS, TFLite or request logging; use the tensorflow/serving image for those.

    python -m serving --port 8500 --rest_api_port 8501 --model_name NAME --model_base_path /abs/path
    python -m serving --port 8500 --model_config_file /abs/models.config
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the functions that need it, after the flags are parsed
    from serving.tier import TierOptions

SHUTDOWN_GRACE_SECONDS = 5.0
CPUS = os.cpu_count() or 1

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
        description="Local stand-in for tensorflow_model_server. Flag names as TF Serving's, except --sagemaker_port.",
    )

    def flag(name: str, help: str, default: bool = False) -> None:  # noqa: A002 - argparse's word
        parser.add_argument(name, type=_flag_bool, nargs="?", const=True, default=default, help=help)

    parser.add_argument("--port", type=int, default=8500, help="TCP port for the gRPC API")
    parser.add_argument("--rest_api_port", type=int, default=0, help="TCP port for the REST API; 0 turns it off")
    parser.add_argument("--rest_api_num_threads", type=int, default=4 * CPUS, help="REST requests run at once")
    parser.add_argument("--rest_api_timeout_in_ms", type=int, default=30000, help="REST deadline (batching queue)")
    flag("--rest_api_enable_cors_support", "add CORS headers to REST responses")
    parser.add_argument("--model_name", default="default", help="name clients put in ModelSpec.name")
    parser.add_argument("--model_base_path", default="", help="directory of numeric version dirs")
    parser.add_argument(
        "--model_config_file", default="", help="text ModelServerConfig; overrides --model_name/_base_path"
    )
    parser.add_argument(
        "--model_config_file_poll_wait_seconds", type=int, default=0, help="seconds between config re-reads; 0: never"
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=int,
        default=1,
        help="seconds between polls for new versions; 0 polls only once, at start-up",
    )
    flag("--allow_version_labels_for_unavailable_models", "let new labels name versions not loaded yet")
    flag("--enable_batching", "merge concurrent Predict calls (see serving/batching.py for what cannot be)")
    parser.add_argument("--batching_parameters_file", default="", help="text BatchingParameters")
    flag("--enable_per_model_batching_parameters", "batch only versions with their own batching_params.pbtxt")
    flag("--enable_model_warmup", "replay assets.extra/tf_serving_warmup_requests before serving", default=True)
    parser.add_argument("--num_request_iterations_for_warmup", type=int, default=0, help="used if > 0; default 1")
    parser.add_argument("--grpc_max_threads", type=int, default=4 * CPUS, help="gRPC worker threads")
    parser.add_argument(
        "--tensorflow_intra_op_parallelism", type=int, default=0, help="threads within one op; 0: TensorFlow picks"
    )
    parser.add_argument(
        "--tensorflow_inter_op_parallelism", type=int, default=0, help="ops run at once; 0: TensorFlow picks"
    )
    flag("--enable_serialization_as_tensor_content", "send Predict outputs as tensor_content, not *_val fields")
    parser.add_argument(
        "--sagemaker_port", type=int, default=0, help="(stand-in only) SageMaker container port; 0 turns it off"
    )
    args = parser.parse_args(argv)
    if args.port <= 0:
        parser.error("--port must be positive: this stand-in always serves gRPC")
    if args.tensorflow_intra_op_parallelism < 0 or args.tensorflow_inter_op_parallelism < 0:
        parser.error("--tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism must be >= 0")
    if args.grpc_max_threads <= 0 or args.rest_api_num_threads <= 0:
        parser.error("--grpc_max_threads and --rest_api_num_threads must be positive")
    if not args.model_base_path and not args.model_config_file:
        parser.error("Both server_options.model_base_path and server_options.model_config_file are empty!")
    if args.batching_parameters_file and not args.enable_batching:
        parser.error(
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
        )
    return args


def tier_options(args: argparse.Namespace) -> TierOptions:
    """The tier's options as the parsed flags set them."""
    from serving.tier import TierOptions

    return TierOptions(
        grpc_port=args.port,
        rest_api_port=args.rest_api_port,
        sagemaker_port=args.sagemaker_port,
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        enable_per_model_batching_parameters=args.enable_per_model_batching_parameters,
        enable_model_warmup=args.enable_model_warmup,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        grpc_max_threads=args.grpc_max_threads,
        rest_api_num_threads=args.rest_api_num_threads,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        rest_api_enable_cors_support=args.rest_api_enable_cors_support,
        tensor_content=args.enable_serialization_as_tensor_content,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported after argument parsing so that --help and flag errors do not wait for TensorFlow.
    import tensorflow as tf

    from serving.tier import ServingTier

    # Before any model loads: TensorFlow fixes its thread pools when its runtime starts.
    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    logging.getLogger("serving").info(
        "TensorFlow thread pools: intra-op %d, inter-op %d (0: TensorFlow picks)",
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )

    tier = ServingTier(tier_options(args))
    if not tier.start():
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("Shutting down; in-flight requests get %.0f s", SHUTDOWN_GRACE_SECONDS)
    tier.stop(SHUTDOWN_GRACE_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
