"""The base of every config section: unknown keys are errors (a misspelt setting never passes silently)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
