"""Face VAE inference service: a model bundle served by onnxruntime behind FastAPI.

`service.core` is the face library (bundle, model runtime, finding, aligning and compositing faces, imaging, one
function per operation) with no HTTP in it; `service.api` is the HTTP layer on top of it. See README, "Architecture".
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facevae")
except PackageNotFoundError:  # running from a source tree that was never pip-installed
    __version__ = "0+unknown"

#: Prefix of the environment variables that configure the service (`service.api.settings`) and its helpers.
ENV_PREFIX = "FACEVAE_"
