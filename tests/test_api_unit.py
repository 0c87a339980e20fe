"""The API's systemd unit: hardened like the worker units, and running ``geojobs serve``."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import ROOT

UNIT = ROOT / "systemd" / "geojobs_api.service"


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_api_unit_is_hardened_and_binds_loopback() -> None:
    d = _directives()
    one = {k: v[-1] for k, v in d.items()}
    assert "geojobs serve --host 127.0.0.1" in one["ExecStart"]
    assert one["User"] == "geojobs" and one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict" and one["CapabilityBoundingSet"] == ""
    assert one["PrivateTmp"] == one["ProtectHome"] == "yes"
    assert one["Restart"] == "always"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_api_unit_verifies() -> None:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)],
                            capture_output=True, text=True)
    assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr, result.stderr
