"""The OpenAPI schema with the loaded model's real limits, and examples that succeed as given.

The schema models in `service.api.schemas` are written before any model is loaded, so they mark where a limit of the
loaded model belongs (latent length, batch size, strength range); once the model is loaded the marks become
minItems/maxItems/minimum/maximum, and the placeholder example latent becomes the bundle's mean latent, which
`/docs`' "Try it out" can send unchanged.
"""

from __future__ import annotations

from typing import Any

from service.api.schemas import BATCH_MARK, EXAMPLE_LATENT, LATENT_MARK, LATENTS_MARK, STRENGTH_MARK
from service.core.runtime import FaceModel


def with_model_limits(schema: dict[str, Any], model: FaceModel) -> dict[str, Any]:
    """`schema` (FastAPI's OpenAPI dict) with every mark replaced by `model`'s limits, changed in place."""
    example = [round(float(v), 3) for v in model.bundle.latent_stats.mean]

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return example if node == EXAMPLE_LATENT else [visit(item) for item in node]
        if not isinstance(node, dict):
            return node
        if node.pop(LATENT_MARK, False):
            node.update(minItems=model.z_dim, maxItems=model.z_dim)
        if node.pop(LATENTS_MARK, False) or node.pop(BATCH_MARK, False):
            node["maxItems" if node.get("type") == "array" else "maximum"] = model.max_batch
        if node.pop(STRENGTH_MARK, False):
            node.setdefault("additionalProperties", {}).update(minimum=-model.max_strength, maximum=model.max_strength)
        for key, value in node.items():
            node[key] = visit(value)
        return node

    return visit(schema)
