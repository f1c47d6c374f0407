# The only installer: system packages, the virtualenv, the editable install
# and the Cython extension. Every target is idempotent.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

APT_PACKAGES := softhsm2 swtpm swtpm-tools tpm2-tools libtss2-dev libssl-dev opensc p11-kit \
                pkg-config gcc python3-dev python3-venv picocom openssl lrzsz jq gnutls-bin

.PHONY: all install system-packages venv ext test test-fast demo clean

all: install

# Install only what is missing, so a second run touches nothing.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

venv: $(PY)

# The stamp is rebuilt whenever packaging or the extension source changes: the Cython
# modules and their declarations, and what fastpath/_profile.pxd is generated from.
EXT_SOURCES := $(wildcard fastpath/*.pyx fastpath/*.pxi) \
               $(filter-out fastpath/_profile.pxd,$(wildcard fastpath/*.pxd)) \
               fastpath/profile_codegen.py fastpath/results.py hsm/verification_profile.py

$(VENV)/.installed: pyproject.toml setup.py $(EXT_SOURCES) | system-packages $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: system-packages $(VENV)/.installed ext

# The editable install builds the extension in place, and runs again whenever its sources
# change (EXT_SOURCES above); it is built here only if it has gone missing (a checkout that
# removed it), since build_ext would otherwise compile it all a second time. The project's
# modules are compiled to bytecode here too, so the first test run's processes do not each
# compile them (see KEEP_BYTECODE).
EXT_MODULES := _der _x509 _cms _verify

ext: $(VENV)/.installed
	@(for m in $(EXT_MODULES); do ls fastpath/$$m.*.so >/dev/null 2>&1 || exit 1; done) \
	  || $(PY) setup.py -q build_ext --inplace >/dev/null
	@$(PY) -m compileall -q -j 0 pledgeforge hsm firmware boards registrar fastpath station keyserver

# Most tests wait on boards, TPMs and servers rather than compute, so more workers than
# cores pays; a file stays on one worker because its module fixtures are costly. Files are
# handed out in collection order (tests/conftest.py puts the long ones first), not by their
# number of tests, xdist's default, which would leave a long file of few tests to the end.
TEST_WORKERS ?= 4
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The suite starts hundreds of Python processes (CLI runs, boards, servers, pytest workers).
# With PYTHONDONTWRITEBYTECODE set in the environment each of them would compile every
# module of the project from source again (and pytest rewrite every test file again in
# every worker), a large share of the suite's CPU; the test targets let Python keep bytecode.
KEEP_BYTECODE := env -u PYTHONDONTWRITEBYTECODE

test: install
	$(KEEP_BYTECODE) $(PYTEST)

# The suite without the slow end-to-end tests (boards booting, images flashed, fleets).
test-fast: install
	$(KEEP_BYTECODE) $(PYTEST) -m "not slow"

demo: install
	$(VENV)/bin/pledgeforge demo

clean:
	rm -rf build *.egg-info fastpath/*.c fastpath/*.so fastpath/_profile.pxd $(VENV)
