# The two commands of the README: `make demo` and `make test`. Both set the machine up first.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean fresh-test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	./scripts/shellcheck-all.sh
	./scripts/verify-units.sh
	cd vagrant && VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider

test: setup lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/bench_mount.py
	$(BIN)/python bench/bench_commit.py
	$(BIN)/python bench/bench_scale.py
	$(BIN)/python bench/bench_workers.py
	$(BIN)/python bench/bench_sync.py
	$(BIN)/python bench/fleet.py

# Slow (~5 minutes, not for every CI run): the README's two commands in a fresh Debian 12 chroot.
fresh-test:
	./scripts/fresh-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
