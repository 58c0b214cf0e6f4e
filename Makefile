# Two commands for a newcomer: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench package lint browser widget clean

# checkov pins its own boto3, so it lives in a venv of its own inside .venv (requirements-checkov.txt).
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(shell cat requirements-checkov.txt | sha1sum | cut -c1-12)
$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	rm -f $(CHECKOV_VENV)/.installed-* && touch $@

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

# Debian's Chromium for the browser tests (no browser download from elsewhere): its headless shell, the build
# Playwright itself runs headless (the full browser cost the page tests 1.6x the CPU, README), and CJK fonts so
# the screenshots show Chinese rather than empty boxes.
BROWSER_PACKAGES := chromium-headless-shell fonts-noto-cjk
browser:
	@if ! dpkg -s $(BROWSER_PACKAGES) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null; \
	fi

# The page's proof-of-work widget (SPEC §3): npm `altcha`, pinned in package.json / package-lock.json,
# installed with `npm ci` (Debian's Node.js and npm when npm is missing) and its single-file browser
# build copied into the bundle, where chalicelib/pages.py inlines it into the page (no third-party host).
WIDGET := chalicelib/page/vendor/altcha.js
NPM_STAMP := node_modules/.installed-$(shell cat package.json package-lock.json | sha1sum | cut -c1-12)
$(NPM_STAMP): package.json package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	npm ci --ignore-scripts --omit=optional --no-audit --no-fund --loglevel=error
	touch $@

$(WIDGET): $(NPM_STAMP)
	mkdir -p $(dir $@)
	cp node_modules/altcha/dist/altcha.umd.cjs $@

widget: $(WIDGET)

run: $(STAMP) widget
	$(PY) -m local.run

# checkov's venv too: tests/test_infra.py packages the template, and installing checkov inside that test
# cost it 45 s of a fresh machine's pytest run.
# Three workers on two cores: the tests wait for deadlines, backoffs and callbacks much of the time, so two left the
# cores idle; four were 5 % faster but the 20 %-failing partner test, which needs its burst sent well before its
# deadline, failed in 2 of 8 four-worker runs on a loaded machine; six took longer. README.
# Under branch coverage of chalicelib/ by SlipCover (its settings and the floor: pyproject.toml [tool.slipcover]).
# The run writes the workers' merged coverage to .coverage.json with the floor off (--fail-under 0): SlipCover
# 1.1.0 deletes the workers' files when it checks the floor, and then prints the controller's coverage alone. The
# second command prints what no test reaches and fails below the floor.
# (The -W: SlipCover cannot add branch coverage to the tests' own rewritten modules, which are not measured.)
COVERAGE_JSON := .coverage.json
test: $(STAMP) $(CHECKOV_STAMP) browser widget lint
	$(PY) -W "ignore:Unable to activate pytest branch coverage:RuntimeWarning" -m slipcover \
		--json --out $(COVERAGE_JSON) --fail-under 0 -m pytest -n 3 --dist worksteal -q
	$(PY) -m slipcover --merge $(COVERAGE_JSON) --out /dev/null || { \
		echo "make test: branch coverage of chalicelib/ is below pyproject.toml's floor ([tool.slipcover])"; exit 2; }

# One CloudFormation/SAM template per stage: Chalice's API and functions plus infra/generate.py's
# merge template (tables, key, secrets, workflow, roles, alarms, dashboard, WAF), linted by cfn-lint
# and scanned by checkov (each check the template does not meet is skipped in the resource's
# Metadata with its reason, so a new failure fails the build).
STAGE ?= prod
package: $(STAMP) $(CHECKOV_STAMP) widget
	rm -rf build/$(STAGE) && mkdir -p build/$(STAGE)
	$(PY) -m infra.generate $(STAGE) build/$(STAGE)/merge-template.json
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} \
	START_QUEUE_NAME=$$($(PY) -c 'import infra.generate as g; print(g.stage_env("$(STAGE)")["START_QUEUE_NAME"])') \
	RETRY_QUEUE_NAME=$$($(PY) -c 'import infra.generate as g; print(g.stage_env("$(STAGE)")["RETRY_QUEUE_NAME"])') \
	REPLY_QUEUE_NAME=$$($(PY) -c 'import infra.generate as g; print(g.stage_env("$(STAGE)")["REPLY_QUEUE_NAME"])') \
	REPLY_DLQ_NAME=$$($(PY) -c 'import infra.generate as g; print(g.stage_env("$(STAGE)")["REPLY_DLQ_NAME"])') \
		$(VENV)/bin/chalice package --stage $(STAGE) \
		--merge-template build/$(STAGE)/merge-template.json build/$(STAGE)/package
	$(VENV)/bin/cfn-lint build/$(STAGE)/package/sam.json
	$(CHECKOV_VENV)/bin/checkov -f build/$(STAGE)/package/sam.json --framework cloudformation --quiet --compact \
		--skip-download

# Cost of a query (AWS requests, state transitions) and side-by-side latency ratios.
bench: $(STAMP)
	$(PY) -m bench.run

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .local build test-artifacts node_modules chalicelib/page/vendor
