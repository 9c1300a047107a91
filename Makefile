# Two set-up commands on a fresh machine: `make demo` and `make test` (see README).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# torch==2.13.0 is the CPU wheel available offline here; a machine that already has a torch (e.g. a CUDA build
# in the venv) keeps it. Never let pip resolve a bare `torch`: that pulls a multi-GB CUDA build.
$(STAMP): $(VPY) pyproject.toml
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[dev]"
	# Open3D (slam3r eval) needs libusb on Debian/Ubuntu; only tried when the import fails and apt-get exists.
	$(VPY) -c "import open3d" 2>/dev/null || ! command -v apt-get >/dev/null || apt-get install -y -q libusb-1.0-0 \
		|| (apt-get update -q && apt-get install -y -q libusb-1.0-0) \
		|| echo "warning: Open3D needs libusb-1.0-0 (apt-get install libusb-1.0-0); slam3r eval will not work"
	# The browser test (tests/test_app_browser.py) drives Debian's chromium; installed only where apt-get is usable.
	test -x /usr/bin/chromium || ! command -v apt-get >/dev/null \
		|| DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "warning: could not install chromium (apt-get install chromium); the browser test will be skipped"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slam3r demo

test: $(STAMP)
	$(VPY) -m pytest -q

clean:
	rm -rf $(VENV) build dist src/*.egg-info
