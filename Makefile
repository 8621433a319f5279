# Set-up and the two README commands. Everything lands in .venv; nothing is installed system-wide.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
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
