"""The web console (``GET /console``) in a real browser: Debian's chromium driven by Playwright.

A real uvicorn server, real PostGIS and a real dissolve worker (``tests/api_support.py``). The
browser logs in with a key, submits a dissolve from the generated form, watches the job reach
100 % over the SSE stream, maps the result from the vector tiles, opens a feature's popup and
downloads a GeoPackage. Oracles: the job row and the result table in PostGIS, pyogrio reading the
file, and the map's pixels compared with the empty map's. Screenshots of every step are kept in
``tests/artifacts/console/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest

from tests.api_support import ApiServer, api_server
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.db

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
TABLE = "results.console_regions"

playwright_api = pytest.importorskip("playwright.sync_api")
if shutil.which(CHROMIUM) is None:  # `make install` puts it there (Makefile `tools`)
    pytest.fail(f"{CHROMIUM} is missing: run `make install`", pytrace=False)


@pytest.fixture(scope="module")
def api(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from api_server(template_db, tmp_path_factory.mktemp("console"),
                          users={"alice": False, "bob": False}, workers=("dissolve", "hotspot"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    context.set_default_timeout(120_000)  # 2 shared cores: a loaded machine is slow, not broken
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page: Any, name: str, element: Any = None) -> bytes:
    """A screenshot saved as a test artefact; returns its PNG bytes."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = element if element is not None else page
    return bytes(target.screenshot(path=str(ARTIFACTS / f"{name}.png")))


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def changed_share(before: bytes, after: bytes) -> float:
    """The share of pixels that differ between two screenshots (cropped to the common size)."""
    a, b = pixels(before), pixels(after)
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float((np.abs(a[:h, :w] - b[:h, :w]).sum(axis=2) > 30).mean())


def has_colour(png: bytes, hex_colour: str, tolerance: int = 12) -> int:
    """How many pixels have this colour (fills are drawn at 85 % opacity on the background)."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    background = np.array([0xee, 0xf1, 0xf4])
    blended = 0.85 * rgb + 0.15 * background
    return int((np.abs(pixels(png) - blended).max(axis=2) <= tolerance).sum())


def log_in(page: Any, api: ApiServer, key: str) -> None:
    page.goto(f"{api.url}/console")
    page.locator("#login").wait_for(state="visible")
    page.fill("#key", key)
    page.click("#login-submit")


def fill(page: Any, name: str, value: str) -> None:
    page.locator(f'.field[data-field="{name}"] [name]').fill(value)


def test_console_page_and_vendored_maplibre(api: ApiServer) -> None:
    """The page and MapLibre are served by the API itself, with MapLibre's licence."""
    with api.client() as http:
        html = http.get("/console")
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "/console/static/console/console.js" in html.text
        assert "https://" not in html.text  # nothing from a CDN
        script = http.get("/console/static/vendor/maplibre-gl/maplibre-gl.mjs")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert http.get("/console/static/vendor/maplibre-gl/maplibre-gl-worker.mjs").status_code == 200
        assert "MapLibre" in http.get("/console/static/vendor/maplibre-gl/LICENSE.txt").text
        assert http.get("/console/static/../../routes.py").status_code == 404
        links = http.get("/").json()["links"]
        assert any(link["href"].endswith("/console") and link["type"] == "text/html" for link in links)


def test_page_names_a_basemap_only_when_configured() -> None:
    """GEOJOBS_CONSOLE_BASEMAP reaches the page (escaped); without it the page names no host."""
    from geojobs.api.console import render_page
    from geojobs.api.settings import ApiSettings

    plain = render_page("", ApiSettings(console_basemap=""))
    assert 'data-basemap=""' in plain and "http" not in plain
    tiles = 'https://tiles.example/{z}/{x}/{y}.png?a=1&b="2"'
    page = render_page("/gj", ApiSettings(console_basemap=tiles,
                                          console_basemap_attribution="<b>Example</b>"))
    assert 'data-basemap="https://tiles.example/{z}/{x}/{y}.png?a=1&amp;b=&quot;2&quot;"' in page
    assert "&lt;b&gt;Example&lt;/b&gt;" in page and "<b>" not in page
    assert 'src="/gj/console/static/console/console.js"' in page


def test_submit_watch_map_and_download(api: ApiServer, page: Any, tmp_path: Path) -> None:
    log_in(page, api, "not-a-key")
    error = page.locator("#login-error")
    error.wait_for(state="visible")
    assert "not valid" in error.inner_text()
    page.fill("#key", api.keys["alice"])
    page.click("#login-submit")
    page.locator("body[data-ready=true]").wait_for()
    assert page.evaluate("sessionStorage.getItem('geojobs.apiKey')") == api.keys["alice"]
    shot(page, "01-logged-in")

    # the form is generated from /processes/dissolve: one field per input
    with api.client("alice") as http:
        inputs = set(http.get("/processes/dissolve").json()["inputs"])
    fields = set(page.locator(".field").evaluate_all("els => els.map(e => e.dataset.field)"))
    assert fields == inputs
    fill(page, "input_table", "public.us_states")
    fill(page, "by", "sub_region")
    fill(page, "aggregates", '{"state_name": "count"}')
    fill(page, "output_table", TABLE)
    empty_map = shot(page, "02-form-filled", page.locator("#map"))
    page.click("#submit-job")

    row = page.locator("#jobs tbody tr").first
    row.wait_for()
    job_id = row.get_attribute("data-job-id")
    assert job_id
    page.locator(f'#jobs tr[data-job-id="{job_id}"][data-status="successful"]').wait_for(timeout=60_000)
    assert row.locator("progress").evaluate("e => e.value") == 100
    assert row.locator(".pct").inner_text().strip() == "100 %"
    shot(page, "03-successful")
    with api.connect() as conn:
        status = conn.execute("SELECT status, submitted_by, params->'by' FROM background_jobs "
                              "WHERE id = %s", (int(job_id),)).fetchone()
        assert status == ("completed", "alice", ["sub_region"])
        regions = conn.execute(f"SELECT sub_region, count_state_name FROM {TABLE} "  # noqa: S608
                               "ORDER BY sub_region").fetchall()
        # a point inside the largest region, where a click must find that region
        inside = conn.execute(f"SELECT sub_region, ST_X(p), ST_Y(p) FROM (SELECT sub_region, "  # noqa: S608
                              f"ST_PointOnSurface(geom) AS p FROM {TABLE} "
                              "ORDER BY ST_Area(geom) DESC LIMIT 1) AS x").fetchone()
    assert inside is not None

    # the result on the map, from the vector tiles
    row.locator("button.show").click()
    page.locator("#map[data-loaded]").wait_for(timeout=30_000)
    assert int(page.locator("#map").get_attribute("data-features") or 0) > 0
    assert page.locator("#legend").is_visible()
    drawn = shot(page, "04-map", page.locator("#map"))
    changed = changed_share(empty_map, drawn)
    assert changed > 0.05, f"only {changed:.1%} of the map's pixels changed"

    # click inside a region: the popup shows its attributes
    x, y = page.evaluate("([lon, lat]) => { const p = window.geojobsConsole.map.project([lon, lat]);"
                         " return [p.x, p.y]; }", [inside[1], inside[2]])
    page.locator("#map canvas").click(position={"x": x, "y": y})
    popup = page.locator(".maplibregl-popup")
    popup.wait_for()
    assert inside[0] in popup.inner_text()
    shot(page, "05-popup")

    # download the GeoPackage and read it back
    with page.expect_download() as info:
        page.click('#downloads button[data-format="gpkg"]')
    path = tmp_path / "download.gpkg"
    info.value.save_as(path)
    frame = pyogrio.read_dataframe(path)
    assert sorted(zip(frame["sub_region"], frame["count_state_name"], strict=True)) == regions
    assert pyogrio.read_info(path)["dataset_metadata"]["geojobs_job_id"] == job_id


def test_bad_input_shows_the_field_error(api: ApiServer, page: Any) -> None:
    log_in(page, api, api.keys["bob"])
    page.locator("body[data-ready=true]").wait_for()
    with api.connect() as conn:
        jobs_before = conn.execute("SELECT count(*) FROM background_jobs").fetchone()
    fill(page, "input_table", "public.us_states")
    fill(page, "output_table", "Not A Table!")
    page.click("#submit-job")
    field = page.locator('.field[data-field="output_table"]')
    page.locator('.field.invalid[data-field="output_table"]').wait_for()
    message = field.locator(".field-error").inner_text()
    assert "inputs.output_table" in message and "must be" in message
    assert "inputs.output_table" in page.locator("#form-error").inner_text()
    shot(page, "06-bad-input")
    with api.connect() as conn:
        assert conn.execute("SELECT count(*) FROM background_jobs").fetchone() == jobs_before
    assert page.locator("#jobs tbody tr").count() == 0  # bob has no jobs; none was added


def test_failed_job_retry_and_dismiss(api: ApiServer, page: Any) -> None:
    """A job that fails at run time shows failed; Retry queues a new job with the same inputs
    (GET /jobs/{id}/inputs); Dismiss deletes the job row."""
    log_in(page, api, api.keys["bob"])
    page.locator("body[data-ready=true]").wait_for()
    fill(page, "input_table", "public.no_such_table")
    fill(page, "output_table", "")
    page.click("#submit-job")
    first = page.locator("#jobs tbody tr").first
    first.wait_for()
    failed_id = first.get_attribute("data-job-id")
    page.locator(f'#jobs tr[data-job-id="{failed_id}"][data-status="failed"]').wait_for()
    assert "no_such_table" in (first.locator(".status").get_attribute("title") or "")
    with api.client("bob") as http:
        inputs = http.get(f"/jobs/{failed_id}/inputs").json()
    assert inputs["processID"] == "dissolve"
    assert inputs["inputs"]["input_table"] == "public.no_such_table"
    with api.client("alice") as http:  # not alice's job
        assert http.get(f"/jobs/{failed_id}/inputs").status_code == 404
    first.locator("button.retry").click()
    retried = page.locator(f'#jobs tbody tr:not([data-job-id="{failed_id}"])').first
    retried.wait_for()
    retried_id = retried.get_attribute("data-job-id")
    page.locator(f'#jobs tr[data-job-id="{retried_id}"][data-status="failed"]').wait_for()
    with api.connect() as conn:
        rows = conn.execute("SELECT id, job_type, params, status FROM background_jobs "
                            "WHERE submitted_by = 'bob' ORDER BY id").fetchall()
    assert [(r[0], r[1], r[3]) for r in rows] == [(int(failed_id or 0), "dissolve", "failed"),
                                                  (int(retried_id or 0), "dissolve", "failed")]
    assert rows[0][2] == rows[1][2]  # the same inputs
    shot(page, "09-retried")
    page.locator(f'#jobs tr[data-job-id="{failed_id}"] button.dismiss').click()
    page.locator(f'#jobs tr[data-job-id="{failed_id}"]').wait_for(state="detached")
    with api.connect() as conn:
        assert conn.execute("SELECT count(*) FROM background_jobs WHERE id = %s",
                            (int(failed_id or 0),)).fetchone() == (0,)


GI_BIN_COLOURS = {3: "#d62f27", 2: "#ed7551", 1: "#fab984", 0: "#f7f7f2", -1: "#c0ccbe",
                  -2: "#849eba", -3: "#4575b5"}
"""The console's Gi_Bin renderer (ArcGIS's seven classes), as console.js declares it."""


def test_hotspot_result_is_drawn_with_gi_bin_classes(api: ApiServer, page: Any) -> None:
    """A hotspot result is coloured by Gi_Bin: every class PostGIS holds shows on the canvas."""
    table = "results.console_hotspots"
    with api.client("alice") as http:
        info = http.post("/processes/hotspot/execution", headers={"Prefer": "wait=20"}, json={
            "inputs": {"input_table": "public.georgia_counties", "value_column": "pctpov",
                       "output_table": table}}).json()
        info = wait_for(lambda: (lambda i: i if i["status"] in ("successful", "failed") else None)(
            http.get(f"/jobs/{info['jobID']}").json()), timeout=240, interval=0.5)
    assert info["status"] == "successful", info
    with api.connect() as conn:
        bins = {r[0] for r in conn.execute(f"SELECT DISTINCT gi_bin FROM {table}")}  # noqa: S608
    assert len(bins) >= 2  # the case shows more than one class
    log_in(page, api, api.keys["alice"])
    page.locator("body[data-ready=true]").wait_for()
    job_id = info["jobID"]
    row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
    row.locator("button.show").click()
    page.locator(f'#map[data-loaded="{table}"]').wait_for(timeout=30_000)
    legend = page.locator("#legend").inner_text()
    assert "Gi_Bin" in legend and "Hot Spot - 99% Confidence" in legend
    drawn = shot(page, "07-hotspot-map", page.locator("#map"))
    shot(page, "08-hotspot-page")
    for value, colour in GI_BIN_COLOURS.items():
        count = has_colour(drawn, colour)
        if value in bins:
            assert count > 20, f"gi_bin {value} ({colour}) is in the table but not on the map"
        elif value != 0:
            assert count < 20, f"gi_bin {value} ({colour}) is on the map but not in the table"
