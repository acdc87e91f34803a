# Two commands do all set-up on a fresh machine (each creates .venv as needed):
#   make train     trains the CIFAR-10 tutorial model: python -m tinybn.train cifar $(ARGS)
#   make test      runs the whole suite: tests/ and crosscheck/ (TensorFlow parity)
# make parity prints the last parity table; make clean-venv removes the environment.
# make train-parallel NP=2 ARGS=...   the same training as NP data-parallel replicas:
#                mpiexec -n $(NP) python -m tinybn.train cifar $(ARGS) (mpi4py and the mpich wheel)
# make fuzz      runs every hypothesis test of tests/ and crosscheck/ on fresh random examples
#                (HYPOTHESIS_PROFILE=explore), FUZZ_SCALE times as many as CI's fixed, derandomized
#                ones (default 20: 10 minutes on 2 cores, 20 when they are shared); a failure prints its
#                falsifying example. Not part of make test, whose examples are the same every run.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
FUZZ_SCALE ?= 20
NP ?= 2

.PHONY: test fuzz train train-parallel parity clean-venv

$(BIN)/.installed-%: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=64" wheel
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

test: $(BIN)/.installed-numba,test
	$(BIN)/python -m pytest tests crosscheck $(ARGS)

fuzz: $(BIN)/.installed-numba,test
	HYPOTHESIS_PROFILE=explore HYPOTHESIS_EXPLORE_SCALE=$(FUZZ_SCALE) \
		$(BIN)/python -m pytest -m hypothesis tests crosscheck $(ARGS)

train: $(BIN)/.installed-numba
	$(BIN)/python -m tinybn.train cifar $(ARGS)

train-parallel: $(BIN)/.installed-numba,mpi
	$(BIN)/mpiexec -n $(NP) $(BIN)/python -m tinybn.train cifar $(ARGS)

parity:
	$(BIN)/python crosscheck/parity.py

clean-venv:
	rm -rf $(VENV)
