#!/usr/bin/env bash
# Installs what the deployment and dashboard tests need, if missing: shellcheck and Chromium
# (Debian packages) and kubernetes-validate (PyPI; it carries the Kubernetes schemas offline).
set -euo pipefail

need_apt=()
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "please install: ${need_apt[*]}" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install -q kubernetes-validate==1.37.0
fi
echo "test tools: $(shellcheck --version | sed -n 2p), $(chromium --version 2>/dev/null || chromium-browser --version), kubernetes-validate $(kubernetes-validate --version)"
