#!/usr/bin/env bash
# Installs what the deployment and dashboard tests need, if missing: shellcheck and Chromium
# (Debian packages) and kubernetes-validate (PyPI; it carries the Kubernetes schemas offline).
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

need_apt=()
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "please install: ${need_apt[*]}" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v kubernetes-validate >/dev/null; then
  # Debian's own Python refuses pip installs outside a virtual environment (PEP 668); this
  # one tool goes to pip's prefix (/usr/local, or ~/.local without root) beside apt's packages.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
    kubernetes-validate==1.37.0
fi
if command -v kubernetes-validate >/dev/null; then
  k8s="kubernetes-validate $(kubernetes-validate --version)"
else
  # A user install (~/.local/bin) off PATH: the tests fall back to `python3 -m kubernetes_validate`.
  k8s="kubernetes-validate $(python3 -m kubernetes_validate --version) (not on PATH)"
fi
echo "test tools: $(shellcheck --version | sed -n 2p), $(chromium --version 2>/dev/null || chromium-browser --version), $k8s"
