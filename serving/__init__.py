"""A local stand-in for tensorflow_model_server (NOT TensorFlow Serving): TF Serving's gRPC and REST
APIs and the SageMaker TF Serving container's HTTP contract over one model store. See ``python -m
serving --help`` and ``serving/__main__.py``."""
