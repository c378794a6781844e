"""The peer `bench_overhead` measures `/decode` against: KServe's Python model server (`kserve.ModelServer`, its v1
REST protocol) running the service's own decoder and PNG encoding.

    python -m bench.kserve_peer --model models/celeba-64-int8 --port 8090 --threads 1 --workers 2
    curl -d '{"instances": [[0, ...]]}' localhost:8090/v1/models/face:predict    # {"predictions": [{"b64": PNG}]}

The model is written as KServe's documentation writes a custom model (`load` and a synchronous `predict`), and
`predict` does what `/decode` does without HTTP (`bench.common.EndpointWork.decode`), so the two servers differ
only in what surrounds the same work.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Sequence
from pathlib import Path

from kserve import Model, ModelServer

from bench.common import EndpointWork
from service.core.runtime import FaceModel

NAME = "face"
PREDICT_PATH = f"/v1/models/{NAME}:predict"
READY_PATH = f"/v1/models/{NAME}"


class FaceDecoder(Model):
    def __init__(self, bundle: Path, threads: int) -> None:
        super().__init__(NAME)
        self.bundle = bundle
        self.threads = threads
        self.work: EndpointWork | None = None

    def load(self) -> bool:
        model = FaceModel.load(self.bundle, threads=self.threads, warm_up=True)
        self.work = EndpointWork(model, model, [])
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict:
        """With several workers KServe pickles the model into each: the sessions stay behind, each worker loads."""
        return {**self.__dict__, "work": None, "ready": False}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        return {"predictions": [{"b64": base64.b64encode(self.work.decode(z)).decode()} for z in payload["instances"]]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per session")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (KServe's default: 1)")
    args = parser.parse_args(argv)
    model = FaceDecoder(args.model, args.threads)
    model.load()
    ModelServer(http_port=args.port, enable_grpc=False, workers=args.workers).start([model])


if __name__ == "__main__":
    main()
