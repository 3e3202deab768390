"""A Jupyter kernel, "Python 3 (contained)", that starts with ``%%container`` ready to use.

For classrooms (notebook 06): students pick the kernel and skip ``%load_ext contained``. It is
ipykernel's own Python kernel, started with one more option; by hand::

    mkdir -p ~/.local/share/jupyter/kernels/python3-contained
    cat > ~/.local/share/jupyter/kernels/python3-contained/kernel.json <<EOF
    {"argv": ["/path/to/python", "-I", "-m", "ipykernel_launcher", "-f", "{connection_file}",
              "--IPKernelApp.extensions=contained"],
     "display_name": "Python 3 (contained)", "language": "python"}
    EOF
    jupyter kernelspec list

``-I`` keeps the notebook's directory (and PYTHONPATH) off sys.path, from start to end (IPython
honours it too): a container can write there, and this kernel often runs as root. To import a
module of your own next to the notebook, ``sys.path.append(".")`` in a cell, knowingly.

`install_kernel` does the same through jupyter_client, which knows where kernels go (the
system's, the user's ``--user``, or a virtualenv's ``--prefix``).
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "python3-contained"
DISPLAY_NAME = "Python 3 (contained)"


def kernel_json(python: str | None = None) -> dict:
    """The kernel.json: this Python's ipykernel, loading the extension at start."""
    return {
        # -I: the kernel starts in the notebook's directory, which containers may write to
        # (-v $PWD:/work); a planted ipykernel_launcher.py or json.py must not run at start.
        "argv": [python or sys.executable, "-I", "-m", "ipykernel_launcher", "-f",
                 "{connection_file}", "--IPKernelApp.extensions=contained"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        # The stop button must raise KeyboardInterrupt in the cell: the magic kills the
        # cell's container on it.
        "interrupt_mode": "signal",
        "metadata": {"debugger": True},
    }


def install_kernel(user: bool = False, prefix: str | None = None) -> Path:
    """Install the kernelspec (``jupyter kernelspec install``); returns its directory."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory(prefix="contained-kernel-") as scratch:
        source = Path(scratch) / KERNEL_NAME
        source.mkdir()
        (source / "kernel.json").write_text(json.dumps(kernel_json(), indent=1) + "\n")
        _copy_logos(source)
        destination = KernelSpecManager().install_kernel_spec(
            str(source), KERNEL_NAME, user=user, prefix=prefix)
    return Path(destination)


def _copy_logos(directory: Path) -> None:
    # Jupyter shows the kernel's logo in the launcher; use the Python kernel's own.
    try:
        import ipykernel
    except ImportError:
        return
    resources = Path(ipykernel.__file__).parent / "resources"
    for logo in resources.glob("logo-*"):
        shutil.copy(logo, directory / logo.name)
