"""The model client seam."""

from agents.model.types import (
    ModelClient,
    ModelRequest,
    ModelResponse,
    OnText,
    usage_from_api,
    warm_up,
    watched,
)

__all__ = ["ModelClient", "ModelRequest", "ModelResponse", "OnText", "usage_from_api", "warm_up",
           "watched"]
