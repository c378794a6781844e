"""Face VAE inference service: a model bundle served by onnxruntime behind FastAPI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facevae")
except PackageNotFoundError:  # running from a source tree that was never pip-installed
    __version__ = "0+unknown"
