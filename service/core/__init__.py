"""The face library, with no HTTP in it: what the service, training and the benchmarks share.

- `bundle`: the model bundle contract (files, manifest, latent statistics, attribute vectors) and its loader;
- `runtime`: `FaceModel`, the bundle's encoder and decoder under onnxruntime plus the latent-space math;
- `sessions`: the one place that opens onnxruntime sessions; `defaults`: the tunable defaults;
- `detection`, `alignment`, `framing`: finding a photo's faces, and cutting one out as training cut its faces;
- `compositing`: an edited face back into the photo; `imaging`: image bytes in and out;
- `operations`: one function per operation (detect, encode a photo, decode, sample, interpolate, edit).

Nothing here imports fastapi, starlette or uvicorn (an import-linter contract in pyproject.toml and a test check it),
and importing this package imports none of its modules.
"""
