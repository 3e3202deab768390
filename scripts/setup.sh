#!/usr/bin/env bash
# Set up contained on a Debian/Ubuntu machine, as root, idempotently:
#   - Debian packages: skopeo, the registry server, static busybox, overlay/namespace tools;
#   - a virtualenv in .venv with the package, Jupyter and the test tools.
# Then, unless --install-only is given, run the main job (scripts/demo.sh) offline.
# --bench instead installs the benchmarks' peers too (podman, runc, catatonit, tini, zstd).
# A normal user may run --install-only (scripts/test.sh does): it makes the virtualenv and says
# which Debian packages are missing instead of installing them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ] && [ "${1:-}" != "--install-only" ]; then
    echo "setup.sh: run me as root (sudo bash scripts/setup.sh): apt-get and the demo's mounts need it" >&2
    exit 1
fi

# Each step prints one line; the tools' own output (apt, pip, setuptools' notices) goes to a log,
# whose end is printed only if a step fails. A finished set-up keeps it as .venv/setup.log.
LOG="$(mktemp /tmp/contained-setup.XXXXXX)"
step() {  # step TEXT COMMAND...: "setup.sh: TEXT... done", or the failure and the log's end
    local text=$1 status=0
    shift
    printf 'setup.sh: %s... ' "$text"
    "$@" >>"$LOG" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        printf 'failed (status %s); the end of %s:\n' "$status" "$LOG"
        tail -n 30 "$LOG" | sed 's/^/    /'
        exit "$status"
    fi
    echo done
}
optional_step() {  # the same, for what the main job does without: a failure is one line
    local text=$1 status=0
    shift
    printf 'setup.sh: %s... ' "$text"
    "$@" >>"$LOG" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        echo "failed (status $status); going on without it (why: .venv/setup.log)"
        return 0
    fi
    echo done
}
# (chained with &&: `set -e` does not apply inside a function that `step` runs)
install_debian_packages() {
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
install_python_packages() {
    .venv/bin/python -m pip install --upgrade pip &&
        .venv/bin/python -m pip install -e '.[test]' jupyterlab
}

APT_PACKAGES=(
    python3 python3-venv python3-pip
    skopeo docker-registry busybox-static umoci
    util-linux iproute2 nftables iptables procps
    fuse-overlayfs uidmap crun hyperfine debootstrap
    libseccomp2 gcc libc6-dev  # seccomp filters; the tiny C init (gcc -static); test helpers
    chromium chromium-driver  # tests/browser drives JupyterLab in it (no browser downloads here)
    podman runc  # tests/test_build.py: an image built here runs under a second, real runtime
    slirp4netns  # rootless --net bridge: the container's network namespace, connected without root
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup.sh: Debian packages: all ${#APT_PACKAGES[@]} installed"
elif [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: not root, so not installing ${missing[*]} (the tests that need them skip)"
else
    step "installing ${#missing[@]} Debian packages (apt-get)" install_debian_packages "${missing[@]}"
fi
# Debian's docker-registry package may start a system service with its unusable default config
# (all interfaces, htpasswd with no users); contained runs its own registry on 127.0.0.1.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    step "making the virtualenv .venv ($PYTHON)" "$PYTHON" -m venv .venv
fi
stamp=.venv/.contained-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    step "installing contained, Jupyter and the test tools into .venv (pip)" \
        install_python_packages
    touch "$stamp"
else
    echo "setup.sh: Python packages in .venv: up to date"
fi
# A named container's PID 1 (contained/runtime/tiny_init.c), compiled once beside its source;
# without it each home compiles its own on first use, or PID 1 stays Python.
step "compiling the tiny init, PID 1 of named containers and spares (gcc -static)" \
    .venv/bin/python -m contained.runtime.tiny_init
# The classroom's hub (tests/test_classroom_hub.py, `contained classroom init`) needs npm's
# configurable-http-proxy: into the project (.npm-prefix), not globally; without npm the test skips.
CHP=.npm-prefix/node_modules/.bin/configurable-http-proxy
# (npm only if there is none: a nodejs from elsewhere, e.g. NodeSource's, brings its own)
if [ ! -x "$CHP" ] && ! command -v npm >/dev/null && [ "$(id -u)" -eq 0 ]; then
    step "installing npm (apt-get)" install_debian_packages npm
fi
if [ -x "$CHP" ]; then
    echo "setup.sh: configurable-http-proxy: installed"
elif command -v npm >/dev/null; then
    # Optional: npm may be unable to reach its registry (a proxy's certificate, offline).
    optional_step "installing configurable-http-proxy into .npm-prefix (npm)" \
        npm install --prefix .npm-prefix configurable-http-proxy
else
    echo "setup.sh: no npm, so no configurable-http-proxy (the classroom hub test skips)"
fi
mv "$LOG" .venv/setup.log
echo "setup.sh: ready (what the tools printed: .venv/setup.log)"

# --bench: also install the tools the benchmarks compare against (benchmarks/*.py measure only
# what is installed and name what is missing), then stop: no demo. podman runs with runc here
# (crun refuses hybrid cgroup hosts); catatonit and tini are the small inits podman and Docker
# use (issue 15); zstd makes benchmarks/unpack.py's zstd copy of its image. docker.io is left
# out: no benchmark drives it, and its package starts a daemon that rewrites iptables.
BENCH_PACKAGES=(podman runc catatonit tini zstd)
if [ "${1:-}" = "--bench" ]; then
    bench_missing=()
    for p in "${BENCH_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            bench_missing+=("$p")
    done
    if [ "${#bench_missing[@]}" -eq 0 ]; then
        echo "setup.sh: benchmark peers: all ${#BENCH_PACKAGES[@]} installed"
    else
        LOG="$(mktemp /tmp/contained-setup.XXXXXX)"
        step "installing the benchmark peers ${bench_missing[*]} (apt-get)" \
            install_debian_packages "${bench_missing[@]}"
        cat "$LOG" >>.venv/setup.log && rm -f "$LOG"
    fi
    exit 0
fi

if [ "${1:-}" != "--install-only" ]; then
    exec bash scripts/demo.sh
fi
