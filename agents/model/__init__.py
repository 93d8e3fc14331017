"""The model client seam."""

from agents.model.types import ModelClient, ModelRequest, ModelResponse, OnText, usage_from_api

__all__ = ["ModelClient", "ModelRequest", "ModelResponse", "OnText", "usage_from_api"]
