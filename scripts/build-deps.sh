#!/usr/bin/env bash
# What building zone-egress needs beyond Rust: cmake and libclang, because boring-sys builds
# BoringSSL (the terminating TLS stack) from source. Installs them with apt-get when they are
# missing and this is a Debian-like machine run as root; otherwise says what to install.
set -euo pipefail
have_libclang() {
  ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' || compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null
}
if command -v cmake >/dev/null && have_libclang; then
  exit 0
fi
if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "installing cmake and libclang (BoringSSL is built from source)..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake libclang-dev >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake libclang-dev >/dev/null; }
  exit 0
fi
echo "error: building zone-egress needs cmake and libclang (BoringSSL is built from source);" \
  "on Debian/Ubuntu: sudo apt-get install cmake libclang-dev" >&2
exit 1
