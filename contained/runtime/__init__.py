"""The runtime: a spec, its steps, overlay, namespaces, rootfs, cgroups, the process, seccomp,
PID 1, the runner and its wire, and the lifecycle (`container`). Notebooks 01-03, 05-07.
"""
