"""Resolve user-supplied relative paths inside a fixed base directory.

Job parameters name rasters by a path relative to a configured directory;
these helpers make sure such a path can only ever reach a file inside that
directory, whatever ``..``, absolute paths or symbolic links it holds.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from analysis.errors import AnalysisError

__all__ = ["resolve_input", "resolve_output", "resolve_under"]


def resolve_under(base: str | os.PathLike[str], relative: str, *, field: str) -> Path:
    """The real path of ``relative`` inside ``base``, or an :class:`AnalysisError`.

    Refuses empty and absolute paths, any ``..`` part, and paths that leave
    ``base`` once symbolic links are followed.
    """
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise AnalysisError("give a non-empty relative file path", field=field)
    if (
        PurePosixPath(relative).is_absolute()
        or PureWindowsPath(relative).is_absolute()
        or PureWindowsPath(relative).drive
        or relative.startswith(("~", "\\"))
    ):
        raise AnalysisError(
            f"{relative!r} is an absolute path; give a path relative to the data directory",
            field=field,
        )
    if ".." in PurePosixPath(relative.replace("\\", "/")).parts:
        raise AnalysisError(f"{relative!r} may not contain '..'", field=field)
    root = Path(base).resolve()
    target = (root / relative).resolve()
    if target == root:
        raise AnalysisError(f"{relative!r} names the directory itself, not a file", field=field)
    if not target.is_relative_to(root):
        raise AnalysisError(
            f"{relative!r} leads outside the data directory (through a symbolic link?)",
            field=field,
        )
    return target


def resolve_input(base: str | os.PathLike[str], relative: str, *, field: str) -> Path:
    """Like :func:`resolve_under`, for a file that must already exist."""
    target = resolve_under(base, relative, field=field)
    if not target.is_file():
        raise AnalysisError(f"no file {relative!r} in {Path(base)}", field=field)
    return target


def resolve_output(
    base: str | os.PathLike[str],
    relative: str,
    *,
    field: str,
    suffixes: tuple[str, ...] = (".tif", ".tiff"),
    overwrite: bool = False,
) -> Path:
    """Like :func:`resolve_under`, for a file to write; creates its directory."""
    target = resolve_under(base, relative, field=field)
    if target.suffix.lower() not in suffixes:
        raise AnalysisError(
            f"{relative!r} must end in one of {', '.join(suffixes)}", field=field
        )
    if target.exists() and not overwrite:
        raise AnalysisError(
            f"{relative!r} already exists; choose another name or set overwrite", field=field
        )
    if target.is_dir():
        raise AnalysisError(f"{relative!r} is a directory", field=field)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The directory may have been swapped for a link while we created it.
    if not target.parent.resolve().is_relative_to(Path(base).resolve()):
        raise AnalysisError(f"{relative!r} leads outside the data directory", field=field)
    return target
