"""systemd units rendered from templates: one named unit per job type, and the platform's own.

Every worker unit comes from one template, ``geojobs/systemd/worker.service.in`` (shipped in
the package), so a new job type needs no hand-copied unit: it gets ``<type>_worker.service``
by being registered. Another unit (a service, a timer) is a template in ``geojobs/systemd/``
plus one line in :data:`PLATFORM_UNITS`. The files in the repository's ``systemd/`` folder are
these, rendered with the defaults (``geojobs units render --output systemd``); a test fails
when they drift.

Templates use :class:`string.Template` placeholders: ``${prefix}`` (the install directory),
``${python}`` (its interpreter, default ``<prefix>/.venv/bin/python``), ``${user}`` and
``${group}`` (the account the service runs as), ``${header}`` (a do-not-edit line), plus each
unit's own values (``${job_type}``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from string import Template

from geojobs import registry

__all__ = ["Unit", "PLATFORM_UNITS", "DEFAULT_PREFIX", "DEFAULT_USER", "SYSTEM_DIR", "all_units",
           "render", "render_all", "write_units", "install"]

DEFAULT_PREFIX = "/opt/geojobs"
DEFAULT_USER = "geojobs"
SYSTEM_DIR = Path("/etc/systemd/system")
TEMPLATES = files("geojobs") / "systemd"
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Unit:
    """A unit file: its name, the template it is rendered from and that template's own values."""

    name: str
    template: str
    values: Mapping[str, str] = field(default_factory=dict)


PLATFORM_UNITS: tuple[Unit, ...] = (
    Unit("geojobs_api.service", "api.service.in"),
    Unit("geojobs_janitor.service", "janitor.service.in"),
    Unit("geojobs_janitor.timer", "janitor.timer.in"),
    Unit("geojobs_dask_scheduler.service", "dask_scheduler.service.in"),
    Unit("geojobs_dask_workers.service", "dask_workers.service.in"),
)
"""Units besides the workers, e.g. ``Unit("geojobs_api.service", "api.service.in")``."""


def worker_unit(job_type: str) -> Unit:
    """The unit of ``job_type``'s worker: ``systemctl start <job_type>_worker``."""
    return Unit(f"{job_type}_worker.service", "worker.service.in", {"job_type": job_type})


def all_units() -> list[Unit]:
    """One worker unit per registered job type, then the platform's units."""
    return [worker_unit(name) for name in registry.names()] + list(PLATFORM_UNITS)


def render(unit: Unit, *, prefix: str = DEFAULT_PREFIX, user: str = DEFAULT_USER,
           python: str | None = None) -> str:
    """The text of ``unit``; a bad prefix, python or user raises :class:`ValueError`."""
    python = python or f"{prefix}/.venv/bin/python"
    for name, path in (("prefix", prefix), ("python", python)):
        if not path.startswith("/") or re.search(r"[\s%$\\\"']", path):
            raise ValueError(f"{name}: {path!r} must be an absolute path without spaces, quotes, "
                             "'%', '$' or '\\'")
    if not _USER.match(user):
        raise ValueError(f"user: {user!r} is not a valid account name")
    template = (TEMPLATES / unit.template).read_text(encoding="utf-8")
    header = (f"Rendered by `geojobs units render` from geojobs/systemd/{unit.template}; "
              "do not edit.")
    values = {"prefix": prefix.rstrip("/") or "/", "python": python, "user": user, "group": user,
              "header": header, **unit.values}
    return Template(template).substitute(values)


def render_all(*, prefix: str = DEFAULT_PREFIX, user: str = DEFAULT_USER,
               python: str | None = None) -> dict[str, str]:
    """Every unit's name and text."""
    return {u.name: render(u, prefix=prefix, user=user, python=python) for u in all_units()}


def write_units(output: Path, *, prefix: str = DEFAULT_PREFIX, user: str = DEFAULT_USER,
                python: str | None = None) -> list[Path]:
    """Render every unit into ``output`` (created if missing); returns the files written."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all(prefix=prefix, user=user, python=python).items():
        path = output / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        written.append(path)
    return written


def install(output: Path = SYSTEM_DIR, *, prefix: str = DEFAULT_PREFIX, user: str = DEFAULT_USER,
            python: str | None = None) -> list[Path]:
    """Write every unit into ``output`` (default /etc/systemd/system); when that is the system
    directory, make systemd read them (``systemctl daemon-reload``)."""
    written = write_units(output, prefix=prefix, user=user, python=python)
    if output.resolve() == SYSTEM_DIR and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    return written
