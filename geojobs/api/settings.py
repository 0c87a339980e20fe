"""The API's settings: one pydantic-settings class, ``GEOJOBS_…`` environment variables, read once."""

from __future__ import annotations

from functools import cache
from typing import Annotated

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from geojobs.config import DEFAULT_DATABASE_URL

__all__ = ["ApiSettings", "get_settings"]


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split)]
"""A list given in the environment as comma-separated text."""


class ApiSettings(BaseSettings):
    """Everything the HTTP API reads from the environment (see docs/api.md)."""

    model_config = SettingsConfigDict(env_prefix="GEOJOBS_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("GEOJOBS_API_DATABASE_URL", "DATABASE_URL"),
        description="libpq URI the API logs in with (as geojobs_api in production).")
    cors_origins: CommaList = Field(
        default_factory=list, description="Origins allowed by CORS, comma-separated; none by default.")
    callback_hosts: CommaList = Field(
        default_factory=list,
        description="Hosts callbacks may be sent to, comma-separated; loopback is always allowed.")
    api_public_url: str = Field(
        default="", description="Base URL of the API in links sent to callbacks; default the "
        "address it serves on.")
    console_basemap: str = Field(
        default="", description="XYZ raster tile URL template ({z}/{x}/{y}) the web console draws "
        "under results, e.g. an internal tile server; none by default (no request leaves the API).")
    console_basemap_attribution: str = Field(
        default="", description="Attribution shown with the console's basemap.")
    api_max_queued: int = Field(default=100, ge=1, description="Queued jobs allowed per user.")
    api_max_body: int = Field(default=1 << 20, ge=1024, description="Request body limit in bytes.")
    api_max_wait: int = Field(default=60, ge=0, le=600, description="Largest Prefer: wait, seconds.")
    api_fast_routes: bool = Field(
        default=True, description="Serve submit and GET /jobs/{id} without FastAPI's routing and "
        "dependency solver (same answers, a third less CPU per submit); false only to compare.")
    api_pool_size: int = Field(default=10, ge=1, le=200, description="Database connections per process.")
    layer_schemas: CommaList = Field(
        default_factory=list,
        description="Schemas served as layers besides the output schemas (GEOJOBS_OUTPUT_SCHEMAS, "
        "default results), comma-separated; none by default.")
    layer_max_age: int = Field(
        default=0, ge=0, le=3600, description="max-age in seconds of a vector tile (with its ETag); "
        "0: no-cache, clients revalidate each tile, so a cache shared by two users' keys (QGIS's "
        "ignores Vary: Authorization) never shows one user's tile to the other.")
    api_callback_timeout: float = Field(default=10.0, gt=0, description="Seconds per callback POST.")
    listen_url: str = Field(
        default="", description="Behind PgBouncer: a direct libpq URI used only to LISTEN for job "
        "changes (GEOJOBS_LISTEN_URL); without it the API polls watched jobs.")
    pooled_poll_interval: float = Field(
        default=0.5, gt=0, description="Behind PgBouncer without GEOJOBS_LISTEN_URL: seconds "
        "between reads of the jobs that requests wait for.")
    api_callback_backoff: float = Field(
        default=5.0, gt=0, description="Seconds before the first callback retry; doubles each time.")


@cache
def get_settings() -> ApiSettings:
    """The settings of this process, read from the environment once."""
    return ApiSettings()
