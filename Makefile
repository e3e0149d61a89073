# ukdbg: the two commands of the README, and a few more.
#   make demo    set up, build the fixtures, crash a unikernel, show the report and core
#   make test    set up, then run the whole test suite on real KVM and gdb
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean
setup:
	@./scripts/setup.sh

demo: setup
	@./scripts/demo.sh

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/boot.py
	$(PY) bench/hypercalls.py
	$(PY) bench/core.py
	$(PY) bench/inspect.py
	$(PY) bench/gdb.py

clean:
	$(MAKE) -C fixtures clean
