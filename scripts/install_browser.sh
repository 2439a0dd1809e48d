#!/usr/bin/env bash
# Chromium for the browser test (tests/client_js/test_browser.py), from Debian's package.
# Idempotent: does nothing when a Chromium is already there (/usr/bin/chromium, or $ANDES_CHROMIUM).
# The test drives the browser over the DevTools protocol with Python's `websockets`, so no browser
# automation package (and no browser download by one) is needed.
set -euo pipefail

say() { printf '[browser] %s\n' "$*"; }

if [ -n "${ANDES_CHROMIUM:-}" ] && [ -x "${ANDES_CHROMIUM}" ]; then
    say "using ${ANDES_CHROMIUM}"; exit 0
fi
if [ -x /usr/bin/chromium ]; then
    say "chromium is installed ($(/usr/bin/chromium --version 2>/dev/null || echo '?'))"; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: install Chromium yourself and set ANDES_CHROMIUM=/path/to/chromium"; exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        say "need root (or sudo) to apt-get install chromium"; exit 1; fi
fi
say "installing Debian's chromium package (about a minute)"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q chromium >/tmp/andes-chromium-install.log 2>&1; then
    $SUDO apt-get update -q >>/tmp/andes-chromium-install.log 2>&1
    $SUDO apt-get install -y -q chromium >>/tmp/andes-chromium-install.log 2>&1 || {
        tail -n 20 /tmp/andes-chromium-install.log >&2; say "apt-get install chromium failed"; exit 1; }
fi
say "installed $(/usr/bin/chromium --version 2>/dev/null)"
