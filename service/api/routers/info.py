"""What the loaded model is: bundle metadata, providers in use, and the editable attributes."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service import __version__
from service.api.dependencies import LoadedModel, StateDep, no_query_parameters
from service.api.rendering import error_responses
from service.api.schemas import AttributeInfo, AttributeList, Metadata

router = APIRouter(tags=["model"], responses=error_responses(503), dependencies=[Depends(no_query_parameters)])


@router.get("/metadata")
async def metadata(model: LoadedModel, state: StateDep) -> Metadata:
    """Bundle name and format, sizes, the execution providers the sessions really use, and face detection."""
    return Metadata(
        name=model.bundle.name,
        format_version=model.bundle.manifest.format_version,
        image_size=model.image_size,
        z_dim=model.z_dim,
        attribute_count=len(model.bundle.attributes),
        default_sampling=model.default_sampling,
        providers=model.providers,
        face_detection=state.framer is not None and state.framer.available,
        service_version=__version__,
    )


@router.get("/attributes")
async def attributes(model: LoadedModel) -> AttributeList:
    """Every attribute vector /edit accepts, with its quality (AUC), the allowed strength range and whether the
    bundle's learned editor moves it."""
    learned = set(model.learned_attributes)
    return AttributeList(
        attributes=[
            AttributeInfo(
                name=vector.name,
                auc=vector.auc,
                norm=vector.norm,
                method=vector.method,
                step=vector.step,
                length_scale=model.length_scale(vector.name),
                projection_std=vector.projection_std,
                positives=vector.positives,
                negatives=vector.negatives,
                strength_min=-model.max_strength,
                strength_max=model.max_strength,
                learned=vector.name in learned,
            )
            for vector in model.bundle.attributes.values()
        ]
    )
