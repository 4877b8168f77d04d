# The habits: `make run`, `make check` (what CI runs), `make format`, `make bench`.
#
# Python: the newest of python3.13, python3.12, python3.11 (then python3, if it is >= 3.11)
# that runs here (scripts/pythons.sh); `make PYTHON=python3.12 ...` picks another. The venv
# belongs to one interpreter version: asking for another rebuilds it.
PYTHONS := $(shell bash scripts/pythons.sh)
PYTHON ?= $(firstword $(PYTHONS))
PYVER := $(if $(PYTHON),$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null))
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps run format lint typecheck test test-pythons deploy-check check bench clean

install: $(VENV)/.installed-$(PYVER)

$(VENV)/.installed-$(PYVER): pyproject.toml
	@if [ -z "$(PYVER)" ]; then \
		echo "no Python >= 3.11 (python3.13, python3.12, python3.11, python3) runs here" \
			"(PYTHON='$(PYTHON)'): install one, or pass PYTHON=/path/to/python3.x" >&2; \
		exit 1; fi
	@if [ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
		!= "$(PYVER)" ]; then \
		echo "creating $(VENV) with $(PYTHON) (Python $(PYVER))"; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,otel]'
	touch $@

# Debian packages the tests drive: Chromium (browser test) and promtool (alert rules). Without
# root or sudo each is skipped with one line (under CI=true a missing browser fails instead).
system-deps:
	@bash scripts/install-browser.sh
	@bash scripts/install-promtool.sh

# Webhooks on, to the sandbox's own receiver, so the demo page shows each event as it is
# delivered: only while neither the environment nor .env names a webhook or New-Tel keys (the
# receiver exists in sandbox mode only). The fixed secret only signs sandbox events to itself.
run: install
	@if [ -z "$$CALLAUTH_WEBHOOK_URL$$CALLAUTH_WEBHOOK_SECRET$$CALLAUTH_NEWTEL_ACCESS_KEY" ] && \
		! grep -qsiE '^[[:space:]]*(export[[:space:]]+)?CALLAUTH_(WEBHOOK_URL|WEBHOOK_SECRET|NEWTEL_ACCESS_KEY)[[:space:]]*=' .env; then \
		export CALLAUTH_WEBHOOK_URL="http://127.0.0.1:$${CALLAUTH_PORT:-8080}/v1/sandbox/webhooks" \
			CALLAUTH_WEBHOOK_SECRET=whsec_Y2FsbGF1dGgtc2FuZGJveC1kZW1vLXdlYmhvb2tzLTE= \
			CALLAUTH_WEBHOOK_ALLOW_PRIVATE="$${CALLAUTH_WEBHOOK_ALLOW_PRIVATE:-1}"; \
		echo "make run: webhooks go to the sandbox's own receiver, $$CALLAUTH_WEBHOOK_URL"; \
	fi; \
	exec $(BIN)/python -m service

format: install
	$(BIN)/ruff format service tests bench
	$(BIN)/ruff check --fix service tests bench

lint: install
	$(BIN)/ruff format --check service tests bench
	$(BIN)/ruff check service tests bench

typecheck: install
	$(BIN)/mypy service

# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
test: install
	@echo "python $(PYVER) ($(PYTHON)): the whole suite"
	$(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The API, store, inbound and webhook tests on every other interpreter found, each in its own .venv-3.x.
test-pythons:
	@MAKE="$(MAKE)" bash scripts/test-pythons.sh "$(PYVER)" $(PYTHONS)

deploy-check:
	bash scripts/check-deploy.sh

check: lint typecheck system-deps test test-pythons deploy-check

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-3.* .venv-tools .mypy_cache .ruff_cache .pytest_cache
