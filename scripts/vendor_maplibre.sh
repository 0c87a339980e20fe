#!/bin/sh
# Vendor MapLibre GL JS into the package from the npm registry (never a CDN): `make vendor-js`.
# MapLibre 6 ships ES modules only: the page imports maplibre-gl.mjs, which starts its web
# workers from maplibre-gl-worker.mjs beside it. Source maps and the -dev builds are left out.
set -eu
VERSION="${MAPLIBRE_VERSION:-6.20.0}"
DEST="$(cd "$(dirname "$0")/.." && pwd)/geojobs/api/static/vendor/maplibre-gl"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "maplibre-gl@$VERSION" >/dev/null && tar xzf "maplibre-gl-$VERSION.tgz")
rm -rf "$DEST"
mkdir -p "$DEST"
for f in maplibre-gl.mjs maplibre-gl-worker.mjs maplibre-gl.css; do
    cp "$TMP/package/dist/$f" "$DEST/$f"
done
# no source maps are shipped: drop the comments that point at them
sed -i '/^\/\/# sourceMappingURL=/d' "$DEST/maplibre-gl.mjs" "$DEST/maplibre-gl-worker.mjs"
cp "$TMP/package/LICENSE.txt" "$DEST/LICENSE.txt"
echo "$VERSION" > "$DEST/VERSION"
echo "vendored maplibre-gl $VERSION into $DEST"
