#!/usr/bin/env bash
# The main job, offline: busybox as an image, a local registry serving it as docker.io, the
# tutorial's skopeo pull through that registry, the image unpacked, containers run from it, and
# the whole workbook executed (executed notebooks in ./out/workbook).
# Uses the real store (CONTAINED_HOME, or /var/lib/contained for root); writes only under ./out.
set -euo pipefail
cd "$(dirname "$0")/.."

contained=.venv/bin/contained
out=out
heading() { printf '\n== %s\n' "$*"; }
show() { printf '$'; printf ' %q' "$@"; printf '\n'; "$@"; }

home="$(.venv/bin/python -c 'from contained.home import home_path; print(home_path())')"
conf="$home/registry/registries.conf"
mkdir -p "$out"

heading "1. busybox:latest from the host's static busybox (no network)"
show "$contained" import busybox

heading "2. a local registry on 127.0.0.1, seeded with the store's images"
started_here=no
if ! "$contained" registry status >/dev/null 2>&1; then
    started_here=yes
fi
# Stop it on the way out, even after a failure, if this script started it.
trap '[ "$started_here" = yes ] && "$contained" registry stop >/dev/null 2>&1 || true' EXIT
show "$contained" registry start

heading "3. the tutorial's own pull, docker.io served by the local registry"
rm -rf "$out/tutorial"
mkdir -p "$out/tutorial"
(cd "$out/tutorial" && show skopeo --registries-conf "$conf" copy docker://busybox:latest oci:busybox:latest)
show cat "$out/tutorial/busybox/index.json"
echo

heading "4. the same pull into the store"
show "$contained" pull busybox --registries-conf "$conf"
show "$contained" images

heading "5. the image flattened into a directory"
rm -rf "$out/busybox-rootfs"
show "$contained" unpack busybox "$out/busybox-rootfs"
show ls "$out/busybox-rootfs"
printf '%s applets linked to /bin/busybox\n' "$(find "$out/busybox-rootfs" -type l | wc -l)"

heading "6. stop the registry"
if [ "$started_here" = yes ]; then
    show "$contained" registry stop
    started_here=no
else
    echo "(it was running before this demo: left running; \`contained registry stop\` stops it)"
fi

heading "7. a container: its own hostname, PID 1, only lo; the host's kernel"
show "$contained" run --hostname demo busybox sh -c 'hostname; uname -r; ps; ls /sys/class/net'

heading "8. a memory limit that holds: 16M, and a 64 MB allocation"
show "$contained" run -m 16M busybox sh -c 'x=$(head -c 67108864 /dev/zero | tr "\\0" a)' || echo "(exit status $?)"

heading "9. what it does, as shell commands (the tutorial's steps, completed)"
show "$contained" run --dry-run busybox true

heading "10. the workbook, executed offline: notebooks 00-09 into $out/workbook"
rm -rf "$out/workbook"
show .venv/bin/python -m contained.workbook "$out/workbook" notebooks/0[0-7]-*.ipynb
# 08 builds a bridge with NAT rules: here it runs in a network namespace of its own, so the
# demo changes nothing in this machine's network (on a lab VM, students run it as it is).
made_run_netns=no
[ -d /run/netns ] || made_run_netns=yes
show unshare --net --mount --propagation private -- sh -c \
    'ip link set lo up && mkdir -p /run/netns && mount -t tmpfs lab08 /run/netns &&
     exec .venv/bin/python -m contained.workbook "$1" notebooks/08-networking.ipynb' \
    sh "$out/workbook"
[ "$made_run_netns" = no ] || rmdir /run/netns 2>/dev/null || true
show .venv/bin/python -m contained.workbook "$out/workbook" notebooks/09-*.ipynb

heading "11. nothing left behind: what a crash could leave, and the empty cgroup parent"
show "$contained" gc

heading "done"
cat <<EOF
Open the workbook in JupyterLab:
    .venv/bin/jupyter lab --allow-root --ip 127.0.0.1 notebooks/
Executed copies (with outputs) are in $out/workbook.
EOF
