# make run   - create .venv, install pushsvc, run it on port 8080: a master and
#              a pool of workers, one per CPU (ARGS="--workers 0" for one process)
# make test  - create .venv, install with test extras, run the trial suite
# make bench - create .venv, run pushsvc-bench (a few minutes; BENCH_ARGS= for options),
#              then across two nodes on 1 and 3 Redis shards (CROSS_NODE_ARGS=)
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8080
ARGS   ?=
BENCH_ARGS ?=
CROSS_NODE_ARGS ?= --workers 1 --clients 2000

.PHONY: run test bench clean redis-server browser pusherjs

# An editable install: the checkout itself is on sys.path (setup.py says
# why), so `.venv/bin/pushsvc`, `.venv/bin/twistd -n pushsvc` and the tests
# run this folder's code.  --use-pep517 is what pip >= 25 does anyway (an
# older pip falls back to the deprecated `setup.py develop` once the wheel
# package is installed).
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --use-pep517 -e '.[test,bench]'
	touch $@

# `pushsvc` runs the server as `twistd -n --pidfile= pushsvc` does.
run: $(VENV)/.installed
	$(VENV)/bin/pushsvc --port $(PORT) $(ARGS)

# The Redis tests start their own redis-server (from PATH): install it with
# apt when it is missing and we may (root, or sudo without a password).
# Without it they are skipped, or fail when CI=true.
redis-server:
	@command -v redis-server >/dev/null && exit 0; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "redis-server is missing and cannot be installed here (not root, no sudo)"; \
	    exit 0; fi; \
	  echo "installing redis-server with apt-get"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null \
	    || { $$sudo apt-get update -q >/dev/null \
	         && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server \
	              >/dev/null; } \
	    || echo "could not install redis-server: the Redis tests will be skipped (fail with CI=true)"

# The browser test (tests/test_browser.py) drives Debian's chromium, headless,
# with playwright-core from npm: install chromium with apt when it is missing
# and we may, and playwright-core into tests/browser/node_modules (git-ignored).
# Without them it is skipped, or fails when CI=true.
browser:
	@if ! command -v chromium >/dev/null && ! [ -x /usr/lib/chromium/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else sudo=none; echo "chromium is missing and cannot be installed here (not root, no sudo)"; fi; \
	  if [ "$$sudo" != none ]; then echo "installing chromium with apt-get"; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
	      || { $$sudo apt-get update -q >/dev/null \
	           && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	                >/dev/null; } \
	      || echo "could not install chromium: the browser test will be skipped (fail with CI=true)"; \
	  fi; \
	fi; \
	if [ ! -d tests/browser/node_modules/playwright-core ]; then \
	  if command -v npm >/dev/null; then echo "installing playwright-core with npm"; \
	    (cd tests/browser && npm install --no-audit --no-fund --no-package-lock --loglevel=error) \
	      || echo "could not install playwright-core: the browser test will be skipped (fail with CI=true)"; \
	  else echo "npm is missing: the browser test will be skipped (fail with CI=true)"; fi; \
	fi

# The Pusher client tests (tests/test_pusher_ws_js.py) drive pusher-js and
# Laravel Echo in Node: npm installs them into tests/pusherjs/node_modules
# (git-ignored).  Without node and npm they are skipped, or fail when CI=true.
pusherjs:
	@if [ ! -d tests/pusherjs/node_modules/pusher-js ] \
	    || [ ! -d tests/pusherjs/node_modules/laravel-echo ]; then \
	  if command -v npm >/dev/null; then echo "installing pusher-js and laravel-echo with npm"; \
	    (cd tests/pusherjs && npm install --no-audit --no-fund --no-package-lock --loglevel=error) \
	      || echo "could not install pusher-js: the Pusher client tests will be skipped (fail with CI=true)"; \
	  else echo "npm is missing: the Pusher client tests will be skipped (fail with CI=true)"; fi; \
	fi

# pyflakes reads the code first (unused names, undefined names); its findings
# fail the run, after the suite, whose summary line comes last.
test: $(VENV)/.installed redis-server browser pusherjs
	@set -o pipefail; $(PY) -m pyflakes pushsvc tests examples tools; lint=$$?; \
	  [ $$lint = 0 ] || echo "pyflakes: the problems above fail this run"; \
	  $(PY) -m twisted.trial --temp-directory=$(VENV)/_trial_temp tests 2>&1 \
	  | tee $(VENV)/trial.log; status=$$?; \
	  [ $$lint = 0 ] || status=1; \
	  $(PY) tools/trial_summary.py $(VENV)/trial.log $$status

bench: $(VENV)/.installed redis-server
	$(VENV)/bin/pushsvc-bench $(BENCH_ARGS)
	$(VENV)/bin/pushsvc-bench --cross-node 1,3 $(CROSS_NODE_ARGS)

clean:
	rm -rf $(VENV) *.egg-info twisted/plugins/dropin.cache
