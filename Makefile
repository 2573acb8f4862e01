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

# Coverage-guided fuzzing (fuzz/, atheris): every harness for FUZZ_RUNS inputs, one after the
# other (never in parallel: the machine is shared), each capped in time and memory. What
# libFuzzer learns goes to FUZZ_WORK, not the repository; crash inputs to FUZZ_WORK/artifacts.
FUZZ_HARNESSES := protocol http1 http2 config cgroup resolv
FUZZ_RUNS ?= 200000
FUZZ_MAX_TIME ?= 1200
FUZZ_RSS_MB ?= 2048
FUZZ_WORK ?= /tmp/tether-fuzz

.PHONY: fuzz
fuzz: setup
	@for h in $(FUZZ_HARNESSES); do \
		mkdir -p $(FUZZ_WORK)/corpus/$$h $(FUZZ_WORK)/artifacts || exit 1; \
		dict=$$(test -f fuzz/$$h.dict && echo -dict=fuzz/$$h.dict); \
		echo "== fuzz.$$h: $(FUZZ_RUNS) inputs"; \
		$(BIN)/python -m fuzz.$$h -runs=$(FUZZ_RUNS) -max_total_time=$(FUZZ_MAX_TIME) \
			-rss_limit_mb=$(FUZZ_RSS_MB) -print_final_stats=1 $$dict \
			-artifact_prefix=$(FUZZ_WORK)/artifacts/$$h- \
			$(FUZZ_WORK)/corpus/$$h fuzz/corpus/$$h || exit 1; \
	done

# The set-up on a fresh Debian 12 root (debootstrap + chroot): several minutes.
fresh-check:
	@bash scripts/fresh-check.sh

clean: down
	rm -rf $(VENV)
