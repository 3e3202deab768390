"""Notebook widgets: a progress bar for ``%container pull``, and a live container dashboard.

Taught in notebook 06. Both show what you would otherwise watch by hand::

    watch -n1 du -sb $HOME/oci                             # a pull's bytes arriving
    watch -n1 cat /sys/fs/cgroup/contained/*/memory.current  # containers' memory (v2)
    contained stop NAME; contained rm NAME

Widgets are updated from a background thread. That is safe in a kernel (ipykernel's iopub
socket is thread-safe) and breaks no rule of the runtime: these threads only read files and send
messages; they never fork, and stop/remove go through `contained.runtime.container` like any call.
ipywidgets is imported only here, and this module only when a widget is shown.
"""

import os
import threading
import time
from pathlib import Path

import ipywidgets

from contained import views
from contained.errors import ContainedError
from contained.runtime import container

PROGRESS_INTERVAL = 0.2
DASHBOARD_INTERVAL = 1.0
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Pull progress

def directory_bytes(path: Path) -> int:
    """Bytes in the regular files under `path` (skopeo writes blobs there as they arrive)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass  # renamed into place between listing and stat
    return total


def expected_bytes(ref: str, registries_conf=None, tls_verify=None) -> int | None:
    """The compressed size of the image's config and layers for this machine, from its raw
    manifest (``skopeo inspect --raw``, twice for a multi-arch index); None if unknown."""
    from contained.images import build, skopeo
    from contained.images.pull import is_loopback
    from contained.images.reference import parse_source

    try:
        source = parse_source(ref)
        if source.transport != "docker":
            return None
        if tls_verify is None:
            tls_verify = not is_loopback(source.reference.registry)
        options = {"action": f"cannot inspect {ref}", "raw": True,
                   "registries_conf": registries_conf, "tls_verify": tls_verify}
        manifest = skopeo.inspect(source.skopeo(), **options)
        if "manifests" in manifest:
            wanted = {"architecture": build.host_architecture(), "os": "linux"}
            digest = next(entry["digest"] for entry in manifest["manifests"]
                          if {k: entry.get("platform", {}).get(k) for k in wanted} == wanted)
            manifest = skopeo.inspect(
                f"docker://{source.reference.repository}@{digest}", **options)
        blobs = [manifest["config"], *manifest["layers"]]
        return sum(int(blob["size"]) for blob in blobs)
    except (ContainedError, KeyError, TypeError, ValueError, StopIteration):
        return None


class PullProgress:
    """A progress bar and a label, fed by a thread that watches the store's layout grow."""

    def __init__(self, store, ref: str, registries_conf=None, tls_verify=None):
        self.store = store
        self.ref = ref
        self._lookup = (registries_conf, tls_verify)
        self.bar = ipywidgets.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                            description="pulling")
        self.label = ipywidgets.Label(f"{ref}: starting")
        self.widget = ipywidgets.HBox([self.bar, self.label])
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="contained-pull-progress",
                                        daemon=True)
        self._baseline = directory_bytes(store.layout) if store.layout.exists() else 0

    def start(self) -> None:
        self._thread.start()

    def finish(self, image=None, error: BaseException | None = None) -> None:
        self._done.set()
        self._thread.join()
        if error is not None:
            self.bar.bar_style = "danger"
            self.label.value = f"{self.ref}: failed: {error}"
        else:
            self.bar.value = 1.0
            self.bar.bar_style = "success"
            self.label.value = f"{image.reference.familiar}: {image.digest[:19]}"

    def _watch(self) -> None:
        total = expected_bytes(self.ref, *self._lookup)
        while not self._done.wait(PROGRESS_INTERVAL):
            received = max(0, directory_bytes(self.store.layout) - self._baseline)
            if total:
                self.bar.value = min(1.0, received / total)
                self.label.value = (f"{self.ref}: {received / 1e6:.1f} of "
                                    f"{total / 1e6:.1f} MB")
            else:
                self.label.value = f"{self.ref}: {received / 1e6:.1f} MB received"


def pull_with_progress(store, ref: str, *, registries_conf=None, tls_verify=None):
    """`Store.pull` with a progress bar displayed in the notebook; returns the Image."""
    from IPython.display import display

    progress = PullProgress(store, ref, registries_conf, tls_verify)
    display(progress.widget)
    progress.start()
    try:
        image = store.pull(ref, registries_conf=registries_conf, tls_verify=tls_verify,
                           progress=False)
    except BaseException as error:
        progress.finish(error=error)
        raise
    progress.finish(image)
    return image


# ---------------------------------------------------------------------------------------------
# The dashboard

def usage_of(found: container.Container):
    """The container's cgroup usage now, or None (stopped, or no cgroup on this host)."""
    if not found.running:
        return None
    group = container.cgroup_of(found.id)
    if group is None:
        return None
    try:
        return group.usage()
    except (OSError, ContainedError):
        return None


class Dashboard:
    """Containers with live memory, CPU and process counts, and stop/remove buttons.

    `refresh()` re-reads everything; the "live" checkbox runs it every second from a thread,
    which stops when the box is unticked or the widget is closed.
    """

    HEADER = ("name", "image", "status", "memory", "CPU", "processes", "")

    def __init__(self):
        self._cpu_before: dict[str, tuple[float, float]] = {}
        self.rows: list[dict] = []
        self.table = ipywidgets.GridBox(layout=ipywidgets.Layout(
            grid_template_columns="repeat(6, max-content) auto", grid_gap="2px 16px"))
        self.message = ipywidgets.Label("")
        refresh = ipywidgets.Button(description="refresh", icon="refresh")
        refresh.on_click(lambda _: self.refresh())
        self.live = ipywidgets.Checkbox(value=False, description="live (every second)")
        self.live.observe(self._live_changed, names="value")
        self.widget = ipywidgets.VBox([ipywidgets.HBox([refresh, self.live]), self.table,
                                       self.message])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        self.rows = []
        cells = [ipywidgets.HTML(f"<b>{h}</b>") for h in self.HEADER]
        for found in views.listed_containers(all_=True):  # what `ps -a` lists
            usage = usage_of(found)
            row = {"name": found.name, "id": found.id, "image": found.image,
                   "status": found.status, "memory": None, "memory_limit": None,
                   "cpu_percent": None, "pids": None}
            if usage is not None:
                row.update(memory=usage.memory, memory_limit=usage.memory_limit,
                           pids=usage.pids, cpu_percent=self._cpu_percent(found.id, now, usage))
            self.rows.append(row)
            cells += [ipywidgets.Label(str(v)) for v in (
                found.name, found.image.rsplit("/", 1)[-1], found.status, _memory_text(row),
                "" if row["cpu_percent"] is None else f"{row['cpu_percent']:.0f}%",
                "" if row["pids"] is None else str(row["pids"]))]
            cells.append(ipywidgets.HBox(self._buttons(found)))
        self.table.children = cells

    def stop(self, name: str) -> None:
        self._act(lambda: container.stop(name), f"stopped {name}")

    def remove(self, name: str) -> None:
        self._act(lambda: container.remove(name, force=True), f"removed {name}")

    def close(self) -> None:
        self._stop.set()
        self.widget.close()

    def _act(self, action, done: str) -> None:
        try:
            action()
            self.message.value = done
        except ContainedError as error:
            self.message.value = str(error)
        self.refresh()

    def _buttons(self, found: container.Container) -> list:
        buttons = []
        if found.running and found.persistent:
            stop = ipywidgets.Button(description="stop", button_style="warning")
            stop.on_click(lambda _, name=found.name: self.stop(name))
            buttons.append(stop)
        if found.persistent or not found.running:
            remove = ipywidgets.Button(description="remove", button_style="danger")
            remove.on_click(lambda _, name=found.name: self.remove(name))
            buttons.append(remove)
        return buttons

    def _cpu_percent(self, container_id: str, now: float, usage) -> float | None:
        before = self._cpu_before.get(container_id)
        self._cpu_before[container_id] = (now, usage.cpu_seconds)
        if before is None or now <= before[0]:
            return None
        return max(0.0, (usage.cpu_seconds - before[1]) / (now - before[0]) * 100)

    def _live_changed(self, change) -> None:
        if change["new"]:
            self._stop.clear()
            self._thread = threading.Thread(target=self._refresh_every_second,
                                            name="contained-dashboard", daemon=True)
            self._thread.start()
        else:
            self._stop.set()

    def _refresh_every_second(self) -> None:
        while not self._stop.wait(DASHBOARD_INTERVAL):
            try:
                self.refresh()
            except Exception as error:  # noqa: BLE001 — shown, and the thread goes on
                self.message.value = f"refresh failed: {error}"


def _memory_text(row: dict) -> str:
    if row["memory"] is None:
        return ""
    text = f"{row['memory'] / MIB:.1f} MiB"
    return text + (f" / {row['memory_limit'] / MIB:g} MiB" if row["memory_limit"] else "")
