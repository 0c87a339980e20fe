"""Processes described from the job types' ``Params`` models: a new job type appears with no API code."""

from __future__ import annotations

from functools import cache
from typing import Any

from geojobs import registry
from geojobs.api.oas import to_oas30

__all__ = ["JOB_CONTROL", "process_summary", "process_description", "OUTPUTS"]

JOB_CONTROL = ["async-execute", "dismiss"]
VERSION = "1.0.0"

OUTPUTS: dict[str, Any] = {
    "result": {
        "title": "Result document",
        "description": "What the job reports: output_table (or output_view / output_raster), rows, "
                       "warnings, the counts of the job type, and timings.",
        "schema": {"type": "object", "additionalProperties": True},
    },
    "layer": {
        "title": "Result layer",
        "description": "A link to the result table as an OGC API - Features collection.",
        "schema": {"type": "object", "properties": {"href": {"type": "string", "format": "uri"},
                                                    "rel": {"type": "string"},
                                                    "type": {"type": "string"}},
                   "required": ["href"]},
    },
}


@cache
def _described(job_type: str) -> dict[str, Any]:
    module = registry.load(job_type)
    schema = module.Params.model_json_schema()
    required = set(schema.get("required", []))
    inputs = {}
    for name, prop in schema.get("properties", {}).items():
        converted = to_oas30(prop, schema)
        entry: dict[str, Any] = {
            "title": converted.pop("title", name),
            "description": converted.get("description", ""),
            "schema": converted,
            "minOccurs": 1 if name in required else 0,
            "maxOccurs": 1,
        }
        inputs[name] = entry
    title, text = module.summary, module.description
    outputs = dict(OUTPUTS)
    if job_type == "raster_clip":
        outputs = {"result": OUTPUTS["result"], "cog": {
            "title": "Cloud-optimised GeoTIFF",
            "description": "The clipped raster file.",
            "schema": {"type": "string",
                       "format": "binary"}}}
    return {"id": job_type, "title": title, "description": text, "version": VERSION,
            "jobControlOptions": JOB_CONTROL, "outputTransmission": ["value"],
            "inputs": inputs, "outputs": outputs, "example": {"inputs": module.EXAMPLE}}


def process_summary(job_type: str, base: str) -> dict[str, Any]:
    """The entry of ``job_type`` in ``GET /processes``."""
    full = _described(job_type)
    return {key: full[key] for key in ("id", "title", "description", "version", "jobControlOptions",
                                       "outputTransmission")} | {
        "links": [{"href": f"{base}/processes/{job_type}", "rel": "self",
                   "type": "application/json", "title": "process description"}]}


def process_description(job_type: str, base: str) -> dict[str, Any]:
    """``GET /processes/{job_type}``: inputs from the Params JSON Schema, outputs, an example."""
    return _described(job_type) | {"links": [
        {"href": f"{base}/processes/{job_type}", "rel": "self", "type": "application/json"},
        {"href": f"{base}/processes/{job_type}/execution",
         "rel": "http://www.opengis.net/def/rel/ogc/1.0/execute", "type": "application/json",
         "title": "execute"}]}
