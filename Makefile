# `make demo` and `make test` work on a fresh machine: both run `make setup` first, which
# creates .venv, installs the pins and fetches/caches assets (a second run does nothing).
PY := .venv/bin/python
STAMP := .venv/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
# Transparent huge pages for malloc: XLA:CPU re-faults its per-step buffers otherwise
# (jshear/hostmem.py; the entry points re-exec with this set when it is missing).
export GLIBC_TUNABLES := $(if $(GLIBC_TUNABLES),$(GLIBC_TUNABLES):)glibc.malloc.hugetlb=1

.PHONY: setup assets test demo bench clean-venv

setup: $(STAMP) assets

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	rm -f .venv/.installed-* && touch $(STAMP)

assets: $(STAMP)
	$(PY) -m jshear.assets fetch

# Tests run with 8 fake CPU devices so sharded code paths are exercised (tests/conftest.py).
# Two workers (pytest-xdist), each taking whole files, so module fixtures are built once.
test: setup
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest tests -n 2 --dist loadfile

demo: setup
	$(PY) -m jshear.train --config=configs/demo.py --workdir=runs/demo
	$(PY) -m jshear.eval.generate --model=runs/demo/hf --prompt="The GNU General Public License" --max-new-tokens=32 --temperature=1.0 --seed=1
	$(PY) -m jshear.eval.report runs/demo

bench: setup
	for b in bench/*.py; do $(PY) $$b --small || exit 1; done

clean-venv:
	rm -rf .venv
