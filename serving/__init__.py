"""Local stand-in for tensorflow_model_server; see ``python -m serving --help``."""
