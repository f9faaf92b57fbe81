# Every target sets itself up on first use: a .venv with the project and its test tools,
# and (when root) the Debian packages the tests need. Re-running is quick once set up.
PY      := .venv/bin/python
STAMP   := .venv/.installed
# Runtime: PortAudio for sounddevice, GL/GLib for OpenCV's window. Tests: PulseAudio null sinks
# behind ALSA for the sounddevice tests, Xvfb/xdotool/xwd for the desktop app, iproute2 and
# nftables for the packet-loss tests in a network namespace, Chromium and its WebDriver for the
# browser-client tests; espeak-ng speaks the audio-processing tests' speech; coturn is the TURN
# relay of the NAT tests. Janus (VideoRoom) is the SFU of group calls; the tests and `make demo`
# start their own. PostgreSQL is the shared record store (`--db postgresql://`) and Redis the
# cluster's bus; the tests start their own servers from these packages' binaries.
APT_PKGS := libportaudio2 libgl1 libglib2.0-0 \
	espeak-ng \
	pulseaudio pulseaudio-utils libasound2-plugins \
	xvfb xdotool x11-apps \
	iproute2 nftables coturn \
	chromium chromium-driver \
	janus \
	postgresql redis-server

.PHONY: demo demo-group cluster-demo test bench bench-quick lint setup sysdeps clean

$(STAMP): pyproject.toml callwire/version.py
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: sysdeps $(STAMP)

sysdeps:
	@./scripts/ensure-sysdeps $(APT_PKGS)

demo: setup
	@$(PY) -m callclient demo

demo-group: setup
	@$(PY) -m callclient demo --group

# Three signaling-server nodes on a local Redis and PostgreSQL; alice and bob on different nodes.
cluster-demo: setup
	@$(PY) -m callclient demo --cluster

test: setup
	@$(PY) -m pytest -q

bench: setup
	@$(PY) -m bench

# The headline rows only (720p two-way, audio, 720p under contention), in under 3 minutes:
# bench/results/quick.md and quick.json.
bench-quick: setup
	@$(PY) -m bench.stack --quick

lint: setup
	@.venv/bin/ruff check callwire callclient signaling_server tests bench
	@.venv/bin/mypy callwire callclient signaling_server

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache out
