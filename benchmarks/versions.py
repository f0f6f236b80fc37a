"""Two versions of `superloop_cell` in one process, for A/B measurements.

`from_revision("fe77dc4")` extracts the package as it was at that git
revision (`git archive`, into a temporary folder) and imports it while
`sys.modules` holds no `superloop_cell` modules, so that its own
`from superloop_cell... import` lines resolve to the old files. Afterwards
the modules of the working tree are put back, and the old ones are kept in a
`Library`. `Library.active()` swaps a version's modules into `sys.modules`
for as long as its models are built and traced, so any import the code makes
at that time finds its own version. Keras' registry of serializable classes
is restored after the old version registered its classes.

Import after `benchmarks.backend.select` (this module imports Keras).
"""

import atexit
import contextlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field

import keras

PACKAGE = "superloop_cell"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imports TensorFlow (not there on every machine) and is not needed to train.
SKIPPED_SUBPACKAGES = ("tensorboard",)


def _is_package_module(name):
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _take_package_modules():
    """Takes every `superloop_cell` module out of `sys.modules`."""
    taken = {n: m for n, m in sys.modules.items() if _is_package_module(n)}
    for name in taken:
        del sys.modules[name]
    return taken


def _module_names(root):
    """`superloop_cell.*` module names of the .py files under `root`."""
    names = []
    package_dir = os.path.join(root, PACKAGE)
    for folder, _, files in os.walk(package_dir):
        relative = os.path.relpath(folder, root).split(os.sep)
        if any(part in SKIPPED_SUBPACKAGES for part in relative):
            continue
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            stem = file[:-3]
            parts = relative if stem == "__init__" else relative + [stem]
            names.append(".".join(parts))
    return sorted(names, key=lambda n: (n.count("."), n))


def _import_all(root):
    """Imports the package and its modules from `root`; returns them."""
    for name in _module_names(root):
        importlib.import_module(name)
    return {n: m for n, m in sys.modules.items() if _is_package_module(n)}


@dataclass
class Library:
    """One version of the package, its modules kept alive.

    Attributes:
        label: what the reports call it ("working tree", a revision).
        modules: `{module name: module}`, the package and its modules.
        root: the folder holding the package folder.
    """

    label: str
    modules: dict = field(repr=False)
    root: str

    @property
    def package(self):
        """The top-level module: `SuperloopCell`, `SGUCell`, …"""
        return self.modules[PACKAGE]

    @contextlib.contextmanager
    def active(self):
        """Makes this version the `superloop_cell` of `sys.modules`."""
        previous = _take_package_modules()
        sys.modules.update(self.modules)
        try:
            yield self.package
        finally:
            _take_package_modules()
            sys.modules.update(previous)


def current():
    """The package as imported normally (the working tree)."""
    package = importlib.import_module(PACKAGE)
    root = os.path.dirname(os.path.dirname(os.path.abspath(package.__file__)))
    return Library("working tree", _import_all(root), root)


def _extract(revision, repo):
    """`git archive` of the package at `revision` into a new folder."""
    archive = subprocess.run(
        ["git", "-C", repo, "archive", "--format=tar", revision, PACKAGE],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise ValueError(
            f"Cannot read {PACKAGE}/ at git revision {revision!r} in {repo}: "
            f"{archive.stderr.decode(errors='replace').strip()}"
        )
    folder = tempfile.mkdtemp(prefix=f"{PACKAGE}_{revision}_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        # `filter` exists from Python 3.10.12 / 3.11.4 on.
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(folder, **extra)
    return folder


def from_revision(revision, repo=REPO_ROOT):
    """The package as it was at git `revision`, imported beside this one.

    Args:
        revision: anything `git archive` accepts (a commit, a tag, `HEAD~3`).
        repo: the git checkout. Defaults to the one holding `benchmarks/`.

    Returns:
        A `Library`; the working tree's modules stay in `sys.modules`.
    """
    current()  # so that its modules are there to be put back
    root = _extract(revision, repo)
    registry = dict(keras.saving.get_custom_objects())
    previous = _take_package_modules()
    sys.path.insert(0, root)
    try:
        modules = _import_all(root)
    finally:
        sys.path.remove(root)
        _take_package_modules()
        sys.modules.update(previous)
        # Both versions register their classes under the same names.
        custom_objects = keras.saving.get_custom_objects()
        custom_objects.clear()
        custom_objects.update(registry)
    return Library(_describe(revision, repo), modules, root)


def _describe(revision, repo):
    """`revision` with its short commit hash, e.g. "HEAD (f8f4227)"."""
    parsed = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--short", revision],
        capture_output=True, text=True, check=False,
    )
    commit = parsed.stdout.strip()
    if parsed.returncode != 0 or not commit or revision.startswith(commit):
        return revision
    return f"{revision} ({commit})"
