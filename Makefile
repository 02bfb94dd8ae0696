# gsbflow: the user's verbs.  Every target creates or reuses .venv itself.
#   make demo     the main job on the embedded default (scikit-learn digits)
#   make test     the whole fast test suite and the import contracts (what CI runs)
#   make sim      the full cocotb/RTL simulation suite under Icarus
#   make bench    benchmarks: writes bench/out/*.json and prints tables
#   make bitstream BOARD=icebreaker|ulx3s [CONFIG=...] [BAUD=...] [SEED=...] [TRIES=...] [MODEL=...]; make program BOARD=...
#                 (MODEL: the whole model on the chip, into build/<board>-model, its cycles from the simulated chip)
#   make ptq-results / make lowrank: the PTQ and low-rank results
#   make integer-results: integer-only GSB and PTQ programs against float-host
#   make results  trains the GSB model family and baselines on digits and
#                 Fashion-MNIST (about 50 min on one core), writes results/
#   make results-long: FP, GSB + KD and 1-base binary at dim 96 / depth 3 and
#                 250 epochs (configs/long/; about 75 min on 2 cores) and the export check, writes results/long/
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test sim bench results results-long ptq-results integer-results lowrank bitstream program iverilog fashion-mnist clean help

help:
	@sed -n '2,12p' Makefile

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Icarus Verilog runs the cocotb testbenches; Debian's package is enough.
iverilog:
	@command -v iverilog >/dev/null || { \
	  echo "iverilog not found: installing Debian's iverilog"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y iverilog >/dev/null 2>&1 || { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y iverilog; } || \
	  { echo "error: could not install iverilog; install it with 'apt-get install iverilog'" >&2; exit 1; }; }

# Fashion-MNIST ships as Debian's dataset-fashion-mnist (IDX files, no download at run time).
FASHION := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
fashion-mnist:
	@test -f $(FASHION) || { \
	  echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 || { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y dataset-fashion-mnist; } || \
	  { echo "error: Fashion-MNIST is missing and could not be installed: install the Debian package dataset-fashion-mnist (files under /usr/share/datasets/fashion-mnist/)" >&2; exit 1; }; }

demo: $(STAMP)
	$(PY) -m host demo

test: $(STAMP) iverilog
	$(PY) -m pytest -n 2 --dist loadfile -q

sim: $(STAMP) iverilog
	$(PY) -m pytest -m sim -q tests/sim tests/host

bench: $(STAMP) iverilog
	$(PY) -m bench.bgemm
	$(PY) -m bench.bgemm --threads 1 --out bench/out/bgemm_1thread.json
	$(PY) -m bench.emulator
	$(PY) -m bench.rtl_cycles
	$(PY) -m bench.hw_breakdown
	$(PY) -m bench.whole_model
	$(PY) -m bench.core

integer-results: $(STAMP) fashion-mnist
	$(PY) -m host.integer_results

results: $(STAMP) fashion-mnist
	$(PY) -m model.results
	$(PY) -m model.results --configs configs/digits.yaml --methods fp gsb_ramp

# one dataset per core, then the tables from every finished run
results-long: $(STAMP) fashion-mnist
	@set -e; pids=; for ds in digits fashion_mnist; do \
	  $(PY) -m model.results --configs configs/long/$$ds.yaml --methods fp gsb bin1 --root runs/long \
	    --results-dir runs/long/partial-$$ds --plot runs/long/partial-$$ds/accuracy_vs_bits.png & pids="$$pids $$!"; \
	done; for pid in $$pids; do wait $$pid; done
	$(PY) -m model.results --collect-only --root runs/long --results-dir results/long --plot results/long/accuracy_vs_bits.png
	$(PY) -m host.integer_results --root runs/long --results-dir results/long --ptq-bits --quiet

ptq-results: $(STAMP) fashion-mnist
	$(PY) -m host.ptq_results

lowrank: $(STAMP) fashion-mnist
	$(PY) -m host.lowrank_results

BOARD ?=
CONFIG ?=
SEED ?=
TRIES ?=
MODEL ?=
bitstream: $(STAMP)
	@test -n "$(BOARD)" || { echo "usage: make bitstream BOARD=icebreaker|ulx3s [CONFIG=preset] [BAUD=n] [SEED=n] [TRIES=n] [MODEL=file.gsbf]" >&2; exit 1; }
	nice -n 5 $(PY) -m hw.build bitstream --board $(BOARD) $(if $(CONFIG),--config $(CONFIG)) $(if $(BAUD),--baud $(BAUD)) $(if $(SEED),--seed $(SEED)) $(if $(TRIES),--tries $(TRIES)) $(if $(MODEL),--model $(MODEL) --out build/$(BOARD)-model)
	$(if $(MODEL),$(PY) -m host.core_sim --report build/$(BOARD)-model/report.json)

program: $(STAMP)
	@test -n "$(BOARD)" || { echo "usage: make program BOARD=icebreaker|ulx3s" >&2; exit 1; }
	$(PY) -m hw.build program --board $(BOARD)

clean:
	rm -rf build sim/out bench/out
