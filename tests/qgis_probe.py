"""Open the API's result layers in QGIS (PyQGIS, headless) and print what QGIS sees, as JSON.

Run by tests/test_qgis.py with Debian's ``/usr/bin/python3`` (the interpreter python3-qgis is
built for, not the project's virtualenv) and ``QT_QPA_PLATFORM=offscreen``. It imports nothing
from the project: QGIS is the independent client here.

Input, one JSON object on stdin: ``url`` (the landing page), ``user``, ``key``, ``open`` (the
collection ids to open as layers), ``page_size`` (features per ``items`` request, or null for
QGIS's default), ``rect`` (optional: xmin, ymin, xmax, ymax of an extent to read), ``profile``
(an empty directory for QGIS's profile, settings, authentication database and network cache) and ``auth``:
``uri`` (``username``/``password`` in the data source URI) or ``authcfg`` (a Basic configuration
in QGIS's authentication database, as the desktop's Authentication tab makes it).

Output: ``qgis`` (version), ``listed`` (the collections a saved connection shows in QGIS's
browser, with each one's provider and URI), ``layers`` (per collection: ``valid``, ``count``
(QGIS's featureCount), ``crs``, ``fields``, ``features`` (attributes by field name and WKT),
``in_rect``) and ``requests`` (every URL QGIS asked for, and the HTTP status).

With ``postgres`` (``host``, ``port``, ``dbname``, ``user`` and ``layers``: pairs of table and
key column, "" to let QGIS find it), ``postgres`` reports the same of those tables opened by
QGIS's PostGIS provider (as a desktop user adds them with Add PostGIS Layers), keyed "table key".
With ``tiles`` (``collection``, ``extent`` in longitude/latitude, ``size`` in pixels; needs
``postgres``), ``tiles`` reports what :func:`draw_tiles` counts.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsAuthMethodConfig,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsDataSourceUri,
    QgsFeatureRequest,
    QgsFillSymbol,
    QgsMapLayer,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsNetworkAccessManager,
    QgsProject,
    QgsRectangle,
    QgsSettings,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
    QgsVectorTileBasicRenderer,
    QgsVectorTileBasicRendererStyle,
    QgsVectorTileLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QDate, QDateTime, QSettings, QSize, Qt, QVariant
from qgis.PyQt.QtGui import QColor, QImage
from qgis.PyQt.QtNetwork import QNetworkRequest

PROVIDER = "OAPIF"
_STATUS = QNetworkRequest.HttpStatusCodeAttribute


def plain(value: Any) -> Any:
    """A QGIS attribute value as JSON: NULL as null, dates as ISO text."""
    if isinstance(value, QVariant):
        return None if value.isNull() else value.value()
    if isinstance(value, (QDateTime, QDate)):
        return value.toString(Qt.ISODateWithMs)
    return value


def basic_authcfg(user: str, key: str) -> str:
    """A Basic configuration in QGIS's authentication database (of the throwaway profile)."""
    manager = QgsApplication.authManager()
    if not manager.setMasterPassword("probe", True):
        raise RuntimeError("QGIS authentication database: master password not set")
    config = QgsAuthMethodConfig("Basic")
    config.setName("geojobs")
    config.setConfig("username", user)
    config.setConfig("password", key)
    stored = manager.storeAuthenticationConfig(config)
    if not (stored[0] if isinstance(stored, tuple) else stored):
        raise RuntimeError("QGIS authentication database: configuration not stored")
    return str(config.id())


def browse(url: str, user: str, key: str, authcfg: str) -> list[dict[str, str]]:
    """The collections under a saved "WFS / OGC API - Features" connection in QGIS's browser,
    with the version left to detection (the desktop's default)."""
    settings = QgsSettings()
    settings.setValue("qgis/connections-wfs/geojobs/url", url)
    if authcfg:
        settings.setValue("qgis/WFS/geojobs/authcfg", authcfg)
    else:
        settings.setValue("qgis/WFS/geojobs/username", user)
        settings.setValue("qgis/WFS/geojobs/password", key)
    providers = [p for p in QgsApplication.dataItemProviderRegistry().providers() if p.name() == "WFS"]
    root = providers[0].createDataItem("", None)
    listed = []
    for connection in root.createChildren():
        for item in connection.createChildren():
            if hasattr(item, "providerKey"):
                listed.append({"name": item.name(), "provider": item.providerKey(), "uri": item.uri()})
    return listed


def read_layer(uri: str, name: str, rect: list[float] | None,
               provider: str = PROVIDER) -> dict[str, Any]:
    """What QGIS reads from one layer: validity, counts, fields, every feature and, first (so
    that QGIS asks the server for that extent rather than filtering what it already holds), the
    ``fid`` of the features QGIS gives for ``rect``, as when it draws that extent."""
    out: dict[str, Any] = {}
    if rect is not None:
        layer = QgsVectorLayer(uri, name, provider)
        if layer.isValid():
            request = QgsFeatureRequest().setFilterRect(QgsRectangle(*rect))
            out["in_rect"] = sorted(feature["fid"] for feature in layer.getFeatures(request))
    layer = QgsVectorLayer(uri, name, provider)
    out["valid"] = layer.isValid()
    if not layer.isValid():
        return out
    fields = [field.name() for field in layer.fields()]
    features = []
    for feature in layer.getFeatures():
        geometry = feature.geometry()
        features.append({
            "attributes": {n: plain(v) for n, v in zip(fields, feature.attributes(), strict=True)},
            "wkt": None if geometry.isNull() else geometry.asWkt(17),
        })
    out.update(count=layer.featureCount(), crs=layer.crs().authid(), fields=fields,
               features=features)
    return out


def postgres_uri(postgres: dict[str, Any], table: str, pk: str) -> str:
    """The PostGIS provider's URI of ``table`` (geometry ``geom``; ``pk`` "" lets QGIS find it)."""
    uri = QgsDataSourceUri()
    uri.setConnection(postgres["host"], postgres["port"], postgres["dbname"], postgres["user"], "")
    uri.setDataSource(*table.split("."), "geom", "", pk)
    return str(uri.uri(False))


def render(layer: QgsMapLayer, extent: list[float], size: int) -> QImage:
    """``layer`` drawn in Web Mercator over ``extent`` (lon/lat), white background, no
    antialiasing."""
    wgs84, mercator = QgsCoordinateReferenceSystem("EPSG:4326"), QgsCoordinateReferenceSystem("EPSG:3857")
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(mercator)
    settings.setExtent(QgsCoordinateTransform(wgs84, mercator, QgsProject.instance())
                       .transformBoundingBox(QgsRectangle(*extent)))
    settings.setOutputSize(QSize(size, size))
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setFlag(QgsMapSettings.Antialiasing, False)
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def _red(image: QImage, x: int, y: int) -> bool:
    color = QColor(image.pixel(x, y))
    return color.red() > 200 and color.green() < 80 and color.blue() < 80


def draw_tiles(url: str, tiles: dict[str, Any], postgres: dict[str, Any], authcfg: str) -> dict[str, Any]:
    """The collection's vector tiles drawn by QGIS's vector tile layer (Basic ``authcfg``), and
    the same table drawn through the PostGIS provider with the same red fill: the red pixels
    of each and the pixels where the two differ."""
    collection, extent, size = tiles["collection"], tiles["extent"], tiles["size"]
    template = f"{url}/collections/{collection}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}"
    layer = QgsVectorTileLayer(f"type=xyz&url={template}&zmin=0&zmax=14&authcfg={authcfg}", collection)
    fill = QgsFillSymbol.createSimple({"color": "255,0,0,255", "outline_style": "no"})
    style = QgsVectorTileBasicRendererStyle("all", "default", QgsWkbTypes.PolygonGeometry)
    style.setSymbol(fill.clone())
    renderer = QgsVectorTileBasicRenderer()
    renderer.setStyles([style])
    layer.setRenderer(renderer)
    reference = QgsVectorLayer(postgres_uri(postgres, collection, ""), collection, "postgres")
    reference.setRenderer(QgsSingleSymbolRenderer(fill.clone()))
    drawn, wanted = render(layer, extent, size), render(reference, extent, size)
    pixels = [(x, y) for x in range(size) for y in range(size)]
    return {"valid": layer.isValid(), "drawn": sum(_red(drawn, *p) for p in pixels),
            "reference": sum(_red(wanted, *p) for p in pixels),
            "differ": sum(_red(drawn, *p) != _red(wanted, *p) for p in pixels)}


def main() -> int:
    """Read the request on stdin, open the layers, print the JSON report."""
    request = json.load(sys.stdin)
    # Qt's network disk cache (tiles) goes to $XDG_CACHE_HOME when the application has no name
    os.environ["XDG_CACHE_HOME"] = os.path.join(request["profile"], "cache")
    for settings_format in (QSettings.NativeFormat, QSettings.IniFormat):
        QSettings.setPath(settings_format, QSettings.UserScope, request["profile"])
    app = QgsApplication([], False, request["profile"])
    app.setPrefixPath("/usr", True)
    app.initQgis()
    urls: list[str] = []
    QgsNetworkAccessManager.instance().finished.connect(
        lambda reply: urls.append(f"{reply.request().url().toString()} {reply.attribute(_STATUS)}"))
    user, key = request["user"], request["key"]
    authcfg = basic_authcfg(user, key) if request["auth"] == "authcfg" else ""
    report: dict[str, Any] = {"qgis": Qgis.QGIS_VERSION,
                              "listed": browse(request["url"], user, key, authcfg), "layers": {}}
    for collection in request["open"]:
        uri = QgsDataSourceUri()
        uri.setParam("url", request["url"])
        uri.setParam("typename", collection)
        uri.setParam("restrictToRequestBBOX", "1")  # as QGIS's browser adds a layer
        if request["page_size"]:
            uri.setParam("pageSize", str(request["page_size"]))
        if authcfg:
            uri.setAuthConfigId(authcfg)
        else:
            uri.setUsername(user)
            uri.setPassword(key)
        report["layers"][collection] = read_layer(uri.uri(False), collection, request.get("rect"))
    postgres = request.get("postgres") or {}
    report["postgres"] = {}
    for table, pk in postgres.get("layers", []):
        uri = postgres_uri(postgres, table, pk)
        report["postgres"][f"{table} {pk}".strip()] = read_layer(uri, table, None, "postgres")
    if request.get("tiles"):
        report["tiles"] = draw_tiles(request["url"], request["tiles"], postgres,
                                     authcfg or basic_authcfg(user, key))
    QCoreApplication.processEvents()  # the requests' signals come queued from QGIS's threads
    report["requests"] = urls
    print(json.dumps(report))
    sys.stdout.flush()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
