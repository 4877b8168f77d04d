# The habits: `make run`, `make check` (what CI runs), `make format`, `make bench`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps run format lint typecheck test deploy-check check bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Debian packages the tests drive: Chromium (browser test) and promtool (alert rules).
system-deps:
	bash scripts/install-browser.sh
	command -v promtool >/dev/null || apt-get install -y -q --no-install-recommends prometheus \
		|| echo "promtool not installed: alert rules get the structure test only" >&2

run: install
	$(BIN)/python -m service

format: install
	$(BIN)/ruff format service tests bench
	$(BIN)/ruff check --fix service tests bench

lint: install
	$(BIN)/ruff format --check service tests bench
	$(BIN)/ruff check service tests bench

typecheck: install
	$(BIN)/mypy service

# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
test: install system-deps
	$(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

deploy-check:
	bash scripts/check-deploy.sh

check: lint typecheck test deploy-check

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-tools .mypy_cache .ruff_cache .pytest_cache
