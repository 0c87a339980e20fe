"""Open the API's result layers in QGIS (PyQGIS, headless) and print what QGIS sees, as JSON.

Run by tests/test_qgis.py with Debian's ``/usr/bin/python3`` (the interpreter python3-qgis is
built for, not the project's virtualenv) and ``QT_QPA_PLATFORM=offscreen``. It imports nothing
from the project: QGIS is the independent client here.

Input, one JSON object on stdin: ``url`` (the landing page), ``user``, ``key``, ``open`` (the
collection ids to open as layers), ``page_size`` (features per ``items`` request, or null for
QGIS's default), ``rect`` (optional: xmin, ymin, xmax, ymax of an extent to read), ``profile``
(an empty directory for QGIS's profile, settings and authentication database) and ``auth``:
``uri`` (``username``/``password`` in the data source URI) or ``authcfg`` (a Basic configuration
in QGIS's authentication database, as the desktop's Authentication tab makes it).

Output: ``qgis`` (version), ``listed`` (the collections a saved connection shows in QGIS's
browser, with each one's provider and URI), ``layers`` (per collection: ``valid``, ``count``
(QGIS's featureCount), ``crs``, ``fields``, ``features`` (attributes by field name and WKT),
``in_rect``) and ``requests`` (every URL QGIS asked for). With ``postgres`` (``host``, ``port``,
``dbname``, ``user`` and ``layers``: pairs of table and key column, "" to let QGIS find it),
``postgres`` reports the same of those tables opened by QGIS's PostGIS provider (as a desktop
user adds them with Add PostGIS Layers), keyed "table key".
"""

from __future__ import annotations

import json
import sys
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsAuthMethodConfig,
    QgsDataSourceUri,
    QgsFeatureRequest,
    QgsNetworkAccessManager,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication, QDate, QDateTime, QSettings, Qt, QVariant

PROVIDER = "OAPIF"


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


def main() -> int:
    """Read the request on stdin, open the layers, print the JSON report."""
    request = json.load(sys.stdin)
    for settings_format in (QSettings.NativeFormat, QSettings.IniFormat):
        QSettings.setPath(settings_format, QSettings.UserScope, request["profile"])
    app = QgsApplication([], False, request["profile"])
    app.setPrefixPath("/usr", True)
    app.initQgis()
    urls: list[str] = []
    QgsNetworkAccessManager.instance().finished.connect(
        lambda reply: urls.append(reply.request().url().toString()))
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
    for table, key in postgres.get("layers", []):
        uri = QgsDataSourceUri()
        uri.setConnection(postgres["host"], postgres["port"], postgres["dbname"], postgres["user"], "")
        uri.setDataSource(*table.split("."), "geom", "", key)
        report["postgres"][f"{table} {key}".strip()] = read_layer(uri.uri(False), table, None,
                                                                 "postgres")
    QCoreApplication.processEvents()  # the requests' signals come queued from QGIS's threads
    report["requests"] = urls
    print(json.dumps(report))
    sys.stdout.flush()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
