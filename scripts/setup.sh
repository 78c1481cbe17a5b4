#!/usr/bin/env bash
# Set up everything medhash and its tests need on a fresh Debian 12 machine (idempotent):
# Debian's dcmtk, Orthanc, PostgreSQL 15, Redis and Chromium when missing, then a Python 3.11 venv in
# .venv with medhash installed in editable mode with its test extras. No server is started
# here: the tests start their own on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v /usr/bin/storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
# Orthanc's DICOMweb plugin: the tests forward studies to medhash over STOW-RS with it
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# the search page's browser test drives Debian's chromium (never `playwright install`)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  # Debian starts Orthanc as a system service on 4242/8042; medhash's tests run their own.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true; fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.medhash-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing medhash and its dependencies into .venv (torch comes from the local wheel cache when present)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/medhash --help >/dev/null && echo 'medhash command ok'))"
