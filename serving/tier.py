"""The whole local serving tier: the model store, its front ends and its pollers, started and
stopped together, as ``python -m serving`` runs it (and as tests can run it in-process)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.batching import SharedBatchScheduler
from serving.batching_options import BatchingOptions
from serving.errors import ServingError
from serving.grpc_server import build_server
from serving.http_server import Handler, HttpRequest, HttpResponse, HttpServer
from serving.model_config import ModelConfig, model_configs, read_model_config_file, single_model_config
from serving.model_store import Batching, ModelStore, poll_forever
from serving.rest_api import RestApi
from serving.sagemaker import NO_DEFAULT_MODEL, SageMakerApi
from serving.sagemaker_python_service import PythonService, ScriptHandlers, find_script, load_script
from serving.warmup import WarmupOptions

log = logging.getLogger("serving")


@dataclass(frozen=True)
class TierOptions:
    """The flags of ``python -m serving``, by TF Serving's names where it has them."""

    grpc_port: int
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    rest_api_port: int = 0
    rest_api_num_threads: int = 4 * (os.cpu_count() or 1)
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    sagemaker_port: int = 0
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_per_model_batching_parameters: bool = False
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    grpc_max_threads: int = 4 * (os.cpu_count() or 1)
    tensor_content: bool = False


class ServingTier:
    def __init__(self, options: TierOptions) -> None:
        self.options = options
        self.store: ModelStore | None = None
        self._scheduler: SharedBatchScheduler | None = None
        self._grpc: grpc.Server | None = None
        self._http: list[HttpServer] = []
        self._stop = threading.Event()
        self._config_text = ""

    def start(self) -> bool:
        """Loads every model, then opens the ports, as tensorflow_model_server does; False (after
        logging why) when the server could not start."""
        options = self.options
        try:
            models = self._read_models()
            self.store = ModelStore(
                warmup=WarmupOptions(options.enable_model_warmup, max(options.num_request_iterations_for_warmup, 1)),
                batching=self._batching(),
                allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            )
            self.store.apply_config(models)
        except ServingError as exc:
            log.error("Failed to start server. Error: %s", exc.to_string())
            self.stop(0)
            return False
        missing = [m.name for m in models if not self.store.available_versions(m.name)]
        if missing:
            # tensorflow_model_server exits when a version fails to load, but with no version on disk
            # at all it waits forever without opening its port; exiting is clearer here in both cases.
            log.error("No loadable version of model(s) %s", ", ".join(missing))
            self.stop(0)
            return False
        script_handlers = None
        if options.sagemaker_port:
            try:
                script = find_script([m.base_path for m in models])
                script_handlers = load_script(script) if script else None
            except Exception as exc:  # whatever the script raises on import
                # The container's Python service fails to start here too, so /ping never answers.
                log.error("Cannot load the SageMaker inference script: %s", exc)
                self.stop(0)
                return False
            if script is not None:
                log.info("SageMaker inference script %s: its handlers answer /invocations", script)
        try:
            self._open_ports(models, script_handlers)
        except (OSError, RuntimeError) as exc:  # RuntimeError: gRPC's way of saying the port is taken
            log.error("Cannot listen: %s", exc)
            self.stop(0)
            return False
        self._start_pollers()
        for model in models:
            versions = self.store.available_versions(model.name)
            log.info("Serving model %s versions %s on port %d", model.name, versions, options.grpc_port)
        return True

    def stop(self, grace_seconds: float) -> None:
        self._stop.set()
        if self._grpc is not None:
            self._grpc.stop(grace_seconds).wait()
        for server in self._http:
            server.stop()
        if self._scheduler is not None:
            self._scheduler.close()

    def _read_models(self) -> list[ModelConfig]:
        if not self.options.model_config_file:
            return single_model_config(self.options.model_name, self.options.model_base_path)
        config = read_model_config_file(self.options.model_config_file)
        self._config_text = str(config)
        return model_configs(config)

    def _batching(self) -> Batching | None:
        if not self.options.enable_batching:
            return None
        path = self.options.batching_parameters_file
        options = BatchingOptions.read(path) if path else BatchingOptions()
        self._scheduler = SharedBatchScheduler(options.num_batch_threads)
        return Batching(self._scheduler, options, self.options.enable_per_model_batching_parameters)

    def _reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        assert self.store is not None
        self.store.apply_config(model_configs(config))

    def _open_ports(self, models: list[ModelConfig], script_handlers: ScriptHandlers | None = None) -> None:
        assert self.store is not None
        options = self.options
        self._grpc = build_server(
            self.store, options.grpc_port, options.grpc_max_threads, options.tensor_content, self._reload
        )
        self._grpc.start()
        rest = RestApi(self.store, options.rest_api_timeout_in_ms / 1000, options.rest_api_enable_cors_support)
        if options.rest_api_port == options.grpc_port:
            log.error("server_options.http_port cannot be same as grpc_port. Skipped exporting HTTP/REST API.")
        elif options.rest_api_port:
            self._serve_http(options.rest_api_port, "rest", _rest_handler(rest))
            log.info("Exporting HTTP/REST API at:localhost:%d ...", options.rest_api_port)
        if options.sagemaker_port:
            default_model = os.environ.get("SAGEMAKER_TFS_DEFAULT_MODEL_NAME") or (
                models[0].name if models else NO_DEFAULT_MODEL
            )
            service = None
            if script_handlers is not None:
                service = PythonService(
                    script_handlers, rest, f"http://127.0.0.1:{options.sagemaker_port}", options.grpc_port
                )
            self._serve_http(options.sagemaker_port, "sagemaker", SageMakerApi(rest, default_model, service).handle)
            log.info(
                "SageMaker container API at:localhost:%d (default model %s)", options.sagemaker_port, default_model
            )

    def _serve_http(self, port: int, name: str, handler: Handler) -> None:
        server = HttpServer(port, handler, name, self.options.rest_api_num_threads)
        server.start()
        self._http.append(server)

    def _start_pollers(self) -> None:
        assert self.store is not None
        options = self.options
        if options.file_system_poll_wait_seconds > 0:
            self._poll(self.store.poll, options.file_system_poll_wait_seconds, "the file system for model versions")
        if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
            self._poll(self._reread_config, options.model_config_file_poll_wait_seconds, "the model config file")

    def _poll(self, poll: Callable[[], None], seconds: int, what: str) -> None:
        threading.Thread(target=poll_forever, args=(poll, seconds, self._stop, what), name=what, daemon=True).start()

    def _reread_config(self) -> None:
        try:
            config = read_model_config_file(self.options.model_config_file)
            if str(config) != self._config_text:
                self._reload(config)
                self._config_text = str(config)
                log.info("Applied changed model config file %s", self.options.model_config_file)
        except ServingError as exc:
            # As PollFilesystemAndReloadConfig: log, keep serving the last good config.
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc.message)


def _rest_handler(rest: RestApi) -> Handler:
    def handle(request: HttpRequest) -> HttpResponse:
        return rest.handle(request.method, request.path, request.body, request.headers.get("Origin") or "")

    return handle
