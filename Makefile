# LVD builder. The two set-up commands on a fresh machine are `make curate` and `make test`;
# both create .venv and install the package (CPU FAISS) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,ray,beam,test
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma := ,

RUN ?= runs/demo
RECIPE ?= demo
ENGINE ?= local
SEEDS ?=
POOL ?=
SEEDS_CONFIG ?=
WORLD ?=
ARGS ?=
PYTEST_ARGS ?=

export RAY_USAGE_STATS_ENABLED = 0

.PHONY: install curate test test-all bench train-demo clean help

help:
	@echo "make curate [RUN=runs/demo] [SEEDS=imagenet22k POOL=... SEEDS_CONFIG=seeds.yaml] [ENGINE=local|ray|beam]"
	@echo "make test        # the whole test suite (installs into $(VENV) if needed)"
	@echo "make bench       # benchmarks -> bench/results.json"
	@echo "make train-demo  # tiny ViT on the demo run's output (CPU)"

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Your own seeds need your own pool and their locations: refused at once, before installing or
# building the demo world (whose seeds.yaml locates only the demo seeds).
ifneq ($(filter curate,$(MAKECMDGOALS)),)
ifneq ($(strip $(SEEDS)),)
ifeq ($(strip $(POOL)),)
$(error make curate SEEDS=$(SEEDS) needs your own pool and seed locations: pass POOL=/path/to/pool SEEDS_CONFIG=seeds.yaml)
endif
ifeq ($(strip $(SEEDS_CONFIG)$(LVD_SEEDS)$(wildcard seeds.yaml)),)
$(error make curate SEEDS=$(SEEDS) needs the seed locations: pass SEEDS_CONFIG=seeds.yaml (and POOL=/path/to/pool))
endif
endif
endif

curate: install
	$(BIN)/lvd curate --recipe $(RECIPE) $(if $(SEEDS),--seeds $(SEEDS)) --out $(RUN) --engine $(ENGINE) \
		$(if $(POOL),--pool $(POOL)) $(if $(SEEDS_CONFIG),--seeds-config $(SEEDS_CONFIG)) $(if $(WORLD),--world $(WORLD)) $(ARGS)

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS),bench]"
	$(BIN)/python -m bench.run --out bench/results.json $(ARGS)

train-demo: install
	$(BIN)/python -m training.demo --run $(RUN) $(ARGS)

clean:
	rm -rf runs bench/scratch .pytest_cache
