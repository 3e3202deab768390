"""The runtime: a spec, its steps, overlay, namespaces, rootfs, cgroups, the process, seccomp,
PID 1, the runner and its wire, and the lifecycle (`container`). Notebooks 01-03, 05-07.

The set-up order lives in `steps` (named phases); `runner` does one request, `server` is its
loop and spares, `pid1` is the container's first process until the command runs, `client` is
the caller's side, and `wire` the typed events and markers between them.
"""
