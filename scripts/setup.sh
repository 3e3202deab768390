#!/usr/bin/env bash
# Set up contained on a Debian/Ubuntu machine, as root, idempotently:
#   - Debian packages: skopeo, the registry server, static busybox, overlay/namespace tools;
#   - a virtualenv in .venv with the package, Jupyter and the test tools.
# Then, unless --install-only is given, run the main job (scripts/demo.sh) offline.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run me as root (sudo bash scripts/setup.sh): apt-get and the demo's mounts need it" >&2
    exit 1
fi

APT_PACKAGES=(
    python3 python3-venv python3-pip
    skopeo docker-registry busybox-static umoci
    util-linux iproute2 nftables iptables procps
    fuse-overlayfs uidmap crun hyperfine debootstrap
    libseccomp2 gcc libc6-dev  # seccomp filters; the static helpers tests build (gcc -static)
    chromium chromium-driver  # tests/browser drives JupyterLab in it (no browser downloads here)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's docker-registry package may start a system service with its unusable default config
# (all interfaces, htpasswd with no users); contained runs its own registry on 127.0.0.1.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.contained-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]' jupyterlab
    touch "$stamp"
fi

if [ "${1:-}" != "--install-only" ]; then
    exec bash scripts/demo.sh
fi
