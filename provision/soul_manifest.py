"""The `manifest.json` of a layered soul repo, schema `clawdie.layered-soul.v1` (README.md#soul-repos).

The model is the schema: `python -m provision.soul_manifest` rewrites the published
JSON Schema at provision/schemas/clawdie.layered-soul.v1.json (package data) from it, and a test keeps the two
in step.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_ID = "clawdie.layered-soul.v1"
SCHEMA_FILE = Path(str(resources.files("provision") / "schemas" / f"{SCHEMA_ID}.json"))


class Provenance(BaseModel):
    """Where the soul came from and who wrote it."""

    model_config = ConfigDict(extra="forbid")

    origin: str = Field(min_length=1, description="URL or description of where the soul was first written")
    author: str = Field(min_length=1, description="who wrote or curated it")
    created: str | None = Field(default=None, description="ISO 8601 date")


class ShareRule(BaseModel):
    """Files matching `path` may be shared with the listed harnesses or hosts."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="glob relative to the repo root, e.g. skills/**")
    share_with: list[str] = Field(
        min_length=1, description="'harness:NAME', 'host:NAME', or 'harness:*' / 'host:*' for any"
    )


class Privacy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    private: list[str] = Field(default_factory=list, description="globs never shared, whatever the rules say")
    sharing: list[ShareRule] = Field(default_factory=list)


class SoulManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_id: Literal["clawdie.layered-soul.v1"] = Field(alias="schema")
    agent_id: str = Field(pattern=r"^[a-z][a-z0-9]{0,15}$", description="the AGENT_NAME this soul belongs to")
    display_name: str = Field(min_length=1)
    provenance: Provenance
    privacy: Privacy = Field(default_factory=Privacy)
    adapters: dict[str, str] = Field(default_factory=dict, description="harness name → adapter path hint")


def json_schema() -> str:
    schema = SoulManifest.model_json_schema(by_alias=True)
    schema["$id"] = SCHEMA_ID
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_schema(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write_schema()}")
