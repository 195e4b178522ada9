"""Write the JSON Schema of every message model to schemas/json/ (`python -m schemas.generate`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import orjson

from schemas.inputs import INPUT_MODELS
from schemas.outputs import OUTPUT_MODELS

JSON_DIR = Path(__file__).with_name("json")
DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_URI = "https://identity-pipeline.dev/schemas/"


def schema_id(topic: str) -> str:
    """The absolute `$id` of a topic's schema, e.g. .../schemas/identity.merged.schema.json."""
    return f"{BASE_URI}{topic}.schema.json"


def rendered() -> dict[str, bytes]:
    """File name -> JSON Schema text, for every topic's message model."""
    files: dict[str, bytes] = {}
    for topic, model in {**INPUT_MODELS, **OUTPUT_MODELS}.items():
        mode: Literal["validation", "serialization"] = (
            "validation" if topic in INPUT_MODELS else "serialization"
        )
        # Inputs as the codec validates them; outputs as the worker emits them.
        schema = model.model_json_schema(mode=mode)
        schema["$schema"] = DIALECT
        schema["$id"] = schema_id(topic)
        schema["title"] = topic
        text = orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        files[f"{topic}.schema.json"] = text
    return files


def main() -> int:
    """Regenerate the files; print which changed."""
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in rendered().items():
        path = JSON_DIR / name
        if not path.exists() or path.read_bytes() != text:
            path.write_bytes(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
