# The two commands a newcomer runs (as root): `make demo` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
export KUBECONFIG := /var/lib/tether-devcluster/admin.kubeconfig

.PHONY: setup prepare cluster demo test lint unit e2e down clean fresh-check

setup:
	@bash scripts/bootstrap.sh

# Everything `cluster` does before it starts a process: packages, the Kubernetes build, images.
prepare: setup
	$(BIN)/devcluster prepare

cluster: setup
	$(BIN)/devcluster up

demo: cluster
	@bash examples/shop/demo.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not cluster" -q

e2e: cluster
	$(BIN)/pytest -m cluster -q

test: cluster lint
	$(BIN)/pytest -q
	if [ -x ../shared/tools/leak-check ]; then python3 ../shared/tools/leak-check; fi

down: setup
	$(BIN)/devcluster down

# The set-up on a fresh Debian 12 root (debootstrap + chroot): several minutes.
fresh-check:
	@bash scripts/fresh-check.sh

clean: down
	rm -rf $(VENV)
