# geojobs: `make demo` runs the jobs end to end on sample data; `make test` runs the suite.
# Both install what is missing first (PostGIS, the virtualenv, the database schema).

PYTHON ?= python3
VENV := .venv
PG_VERSION ?= 15
export DATABASE_URL ?= postgresql://127.0.0.1:5432/geojobs

.PHONY: install postgis tools postgres venv db demo test lint bench soak clean

install: postgis tools postgres venv

postgis:
	@if [ ! -f /usr/share/postgresql/$(PG_VERSION)/extension/postgis.control ]; then \
		echo "installing PostGIS for PostgreSQL $(PG_VERSION)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-$(PG_VERSION)-postgis-3; \
	fi

# logrotate: the per-worker log files' rotation is tested with the real thing; tmux: `geojobs top`;
# pgbouncer: tests/test_pgbouncer.py starts its own processes (never the system service).
tools:
	@command -v logrotate >/dev/null && command -v tmux >/dev/null && \
		{ command -v pgbouncer || test -x /usr/sbin/pgbouncer; } >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq logrotate tmux pgbouncer; }

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $(PG_VERSION) main start
	@for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,notebooks,bench]'
	$(VENV)/bin/geojobs warm
	@touch $@

db: install
	$(VENV)/bin/geojobs db upgrade

demo: db
	$(VENV)/bin/geojobs demo

test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	$(VENV)/bin/python -m bench

# The full chaos soak: 2,000 jobs, worker kills, and a real PostgreSQL restart (everyone using
# this server sees it restart). Figures go in docs/reliability.md. The short soak runs in `make test`.
soak: install
	$(VENV)/bin/python -m bench.soak --full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
