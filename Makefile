# allkit — two commands for a fresh machine (see README):
#   make        create .venv, install allkit with its extras, check the data, build the book
#   make test   run the test suite (nbval on the notebooks included once they exist)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: all setup book data-check test test-fast lint bench clean-book notebooks

all: book

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,offline,download,onnx]'
	touch $@

data-check: setup
	$(VENV)/bin/allkit data check

book: data-check
	@if [ -f _toc.yml ]; then \
		$(VENV)/bin/jupyter-book build . -W -n --keep-going; \
	else \
		echo "the book (_toc.yml) does not exist yet: the data check above is the main job for now"; \
	fi

# Unit tests, then every notebook executed by nbval in the ci profile, then the book built with -W and
# opened page by page in headless Chromium (tests/test_book.py). Cells tagged nbval-check-output compare with
# the committed outputs exactly only when the data present is the data they were computed on (the data
# fingerprint in every run card: notebooks/make.py --outputs-match-data); otherwise their numbers are masked
# (notebooks/sanitize-synthetic.cfg) and only the structure of the output is compared.
test: setup
	@if $(PY) notebooks/make.py --outputs-match-data; then sanitize=""; \
	else sanitize="--nbval-sanitize-with notebooks/sanitize-synthetic.cfg"; fi; \
	ALLKIT_PROFILE=ci ALLKIT_RUNS=$(CURDIR)/.cache/nbval-runs $(PY) -m pytest tests notebooks \
		--nbval-lax --nbval-current-env $$sanitize -p no:cacheprovider

# The unit tests without the end-to-end ones (marked slow): for the edit-test loop. CI runs `make test`.
test-fast: setup
	ALLKIT_PROFILE=ci $(PY) -m pytest tests -m "not slow" --deselect tests/test_book.py -p no:cacheprovider -q

# Regenerate the committed notebook outputs (the book renders them): the `sample` profile by default,
# on ALLKIT_DATA (the real C-NMC folds in ../shared/data for the published book). Reuses runs/<profile>/ when present.
NOTEBOOK_PROFILE ?= sample
notebooks: setup
	ALLKIT_PROFILE=$(NOTEBOOK_PROFILE) ALLKIT_RUNS=$${ALLKIT_RUNS:-$(CURDIR)/runs} $(PY) notebooks/make.py --execute

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/startup.py

clean-book:
	rm -rf _build
