# geojobs: `make demo` runs the jobs end to end on sample data; `make test` runs the suite.
# Both install what is missing first (PostGIS, the virtualenv, the database schema).

PYTHON ?= python3
VENV := .venv
PG_VERSION ?= 15
export DATABASE_URL ?= postgresql://127.0.0.1:5432/geojobs

.PHONY: install postgis tools postgres venv db demo test lint bench soak clean vendor-js

install: postgis tools postgres venv

postgis:
	@if [ ! -f /usr/share/postgresql/$(PG_VERSION)/extension/postgis.control ]; then \
		echo "installing PostGIS for PostgreSQL $(PG_VERSION)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-$(PG_VERSION)-postgis-3; \
	fi

# logrotate: the per-worker log files' rotation is tested with the real thing; tmux: `geojobs top`;
# chromium: the web console is tested in a real browser (Playwright drives Debian's chromium; it
# never downloads its own); gdal-bin: ogrinfo/ogr2ogr read the result layers over OGC API -
# Features in the tests, and ogr2ogr is the floor of the download benchmark.
# pgbouncer: tests/test_pgbouncer.py starts its own processes (never the system service).
# python3-qgis: tests/test_qgis.py opens the result layers in QGIS's OGC API - Features provider,
# run headless by Debian's /usr/bin/python3 (the bindings are built for it, not for the venv).
tools:
	@command -v logrotate >/dev/null && command -v tmux >/dev/null && command -v chromium >/dev/null \
		&& command -v ogrinfo >/dev/null && { command -v pgbouncer || test -x /usr/sbin/pgbouncer; } >/dev/null \
		&& test -d /usr/lib/python3/dist-packages/qgis \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq logrotate tmux \
		chromium gdal-bin pgbouncer python3-qgis; }

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $(PG_VERSION) main start
	@for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done

venv: $(VENV)/.installed

# uv resolves and installs the same packages as pip several times faster (from its cache when it
# has them); pip only brings uv itself into the new virtualenv. Unlike pip, uv does not compile
# every installed module to bytecode up front (minutes on 2 cores): Python compiles each module
# the first time it is imported and keeps the .pyc, so only what is used is compiled, once.
$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@test -x $(VENV)/bin/uv || $(VENV)/bin/pip install -q uv
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python -e '.[dev,notebooks,bench,dask]'
	$(VENV)/bin/geojobs warm
	@touch $@

db: install
	$(VENV)/bin/geojobs db upgrade

demo: db
	$(VENV)/bin/geojobs demo

# Test modules run in parallel processes (one module stays in one process, so a module's server
# starts once); most of the suite waits on servers and workers rather than computing. The longest
# modules start first and the notebooks and benchmark smoke tests spread over the processes
# (tests/conftest.py: SLOWEST_FIRST, SPLIT_ACROSS_PROCESSES).
TEST_JOBS ?= 3

test: install
	$(VENV)/bin/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	$(VENV)/bin/python -m bench

# The full chaos soak: 2,000 jobs, worker kills, and a real PostgreSQL restart (everyone using
# this server sees it restart). Figures go in docs/reliability.md. The short soak runs in `make test`.
soak: install
	$(VENV)/bin/python -m bench.soak --full

# MapLibre GL JS for the web console, from the npm registry at the pinned version, into the
# package (committed; nothing is fetched at run time). Bump MAPLIBRE_VERSION to upgrade.
vendor-js:
	MAPLIBRE_VERSION=6.20.0 sh scripts/vendor_maplibre.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
