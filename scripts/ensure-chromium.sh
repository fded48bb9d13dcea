#!/usr/bin/env bash
# Make sure the headless browser the console tests drive is installed: Debian's chromium
# and its matching chromedriver. Installs them with apt-get when missing (as root), and
# fails loudly (never skips) when they cannot be had.
set -u
CHROMIUM=${STATEM_CHROMIUM:-/usr/bin/chromium}
DRIVER=${STATEM_CHROMEDRIVER:-/usr/bin/chromedriver}
if [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; then
  exit 0
fi
echo "chromium or chromedriver is missing ($CHROMIUM, $DRIVER); installing Debian's packages..."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
fi
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || true
fi
if [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; then
  echo "chromium is installed: $("$CHROMIUM" --version 2>/dev/null)"
  exit 0
fi
echo "ERROR: the console tests need a headless Chromium and could not install it." >&2
echo "       Install Debian's 'chromium' and 'chromium-driver' packages (apt-get install -y" >&2
echo "       chromium chromium-driver), or point STATEM_CHROMIUM / STATEM_CHROMEDRIVER at a" >&2
echo "       Chromium and its matching chromedriver, then re-run." >&2
exit 1
