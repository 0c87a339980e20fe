"""The API's systemd unit (rendered from geojobs/systemd/api.service.in; test_systemd.py checks
drift, systemd-analyze verify and exposure for every unit): it runs ``geojobs serve`` on loopback."""

from __future__ import annotations

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
    assert one["ExecStart"].endswith("-m geojobs.cli serve --host 127.0.0.1 --port 8000 --workers 2")
    assert one["User"] == "geojobs" and one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict" and one["CapabilityBoundingSet"] == ""
    assert one["PrivateTmp"] == one["ProtectHome"] == "yes"
    assert one["Restart"] == "always"

