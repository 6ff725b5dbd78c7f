"""Result folders: claimed atomically before any work, kept apart from the inputs, replaced only when this tool wrote
them.

Every result folder holds :data:`MARKER_NAME` (a small JSON naming the tool and its version), written last. The rules:

- The output folder may never be, hold, or lie inside an input (series files and folders, the study folder, the
  model or EHR file), nor be the current folder or one above it; resolved real paths are compared.
- An existing non-empty folder is refused unless ``overwrite``; even then it is replaced only when it carries the
  marker and holds nothing but the files this tool writes (:data:`OUTPUT_PATTERNS`). A folder holding any other
  file is refused and never touched.
- :func:`claim_output_folder` runs before any work: it takes a lock beside the folder (``.<name>.orthodiffusion-lock``,
  created with ``mkdir``, which is atomic), checks the folder, and creates the temporary folder the outputs are
  written into (``.<name>.partial.*``), so a second run into the same folder, an unwritable place or a foreign folder
  are refused at once. :meth:`OutputFolderClaim.commit` renames the finished folder into place; on any error,
  Ctrl-C or SIGTERM (:func:`sigterm_raises`) :meth:`OutputFolderClaim.abort` removes the temporary folder, the lock
  and any parent folders the claim created.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union

from .errors import InputError

PathLike = Union[str, os.PathLike]

MARKER_NAME = ".orthodiffusion-output.json"
MARKER_FORMAT = "orthodiffusion.output-folder"
#: Names of the files a result folder holds besides the marker (``fnmatch`` patterns).
OUTPUT_PATTERNS = ("diagnosis.json", "measures.csv", "report.html", "segmentation_*.seg.nrrd", "labelmap_*.nii.gz")
#: Output files never to be read back as MR series (``fnmatch`` patterns, lower case).
OUTPUT_IMAGE_PATTERNS = ("segmentation_*.seg.nrrd", "labelmap_*.nii.gz")
LOCK_SUFFIX = ".orthodiffusion-lock"


# ------------------------------------------------------------------------------------------------ recognising
def is_output_file_name(name: str) -> bool:
    """True for a file name this tool writes into a result folder (the marker included)."""
    return name == MARKER_NAME or any(fnmatch.fnmatchcase(name, p) for p in OUTPUT_PATTERNS)


def carries_marker(folder: PathLike) -> bool:
    """True when ``folder`` holds this tool's marker file."""
    return os.path.isfile(os.path.join(os.fspath(folder), MARKER_NAME))


def is_tool_output(path: PathLike) -> bool:
    """True for a labelmap/segmentation this tool wrote (by name), or any file inside a folder carrying the marker:
    such files are never read as MR series."""
    path = os.fspath(path)
    name = os.path.basename(path).lower()
    if any(fnmatch.fnmatchcase(name, p) for p in OUTPUT_IMAGE_PATTERNS):
        return True
    return carries_marker(os.path.dirname(os.path.abspath(path)))


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def check_apart_from_inputs(out: PathLike, inputs: Iterable[Optional[PathLike]] = ()) -> None:
    """Refuse an output folder that is, holds or lies inside an input, or that is the current folder or above it.

    Raises:
        InputError: naming the output folder and the input.
    """
    o = _real(out)
    cwd = _real(os.getcwd())
    if o == cwd or o in cwd.parents:
        raise InputError("the output folder is the current folder or holds it; give a new folder for the results",
                         out)
    for item in inputs:
        if item is None or not os.path.lexists(os.fspath(item)):
            continue
        r = _real(item)
        if o == r:
            how = "is the input"
        elif o in r.parents:
            how = "holds the input"
        elif r in o.parents:
            how = "lies inside the input"
        else:
            continue
        raise InputError(f"the output folder {how} {os.fspath(item)}; give a folder apart from the inputs", out)


def foreign_entries(folder: PathLike) -> List[str]:
    """Names in ``folder`` that this tool does not write (sub-folders included), sorted."""
    out = []
    for entry in os.scandir(os.fspath(folder)):
        if entry.is_dir(follow_symlinks=False) or not is_output_file_name(entry.name):
            out.append(entry.name)
    return sorted(out)


# ---------------------------------------------------------------------------------------------------- claiming
class OutputFolderClaim:
    """A claimed output folder: the lock beside it and the temporary folder the outputs go into (``partial``).

    Use as a context manager (an exit without :meth:`commit` aborts), or call :meth:`commit` / :meth:`abort`.
    """

    def __init__(self, out: Path, overwrite: bool, lock: Path, partial: Path, created: List[Path]):
        self.out = out
        self.overwrite = overwrite
        self.lock = lock
        self.partial = partial
        self._created = created
        self.done = False

    def __enter__(self) -> "OutputFolderClaim":
        return self

    def __exit__(self, *exc) -> None:
        if not self.done:
            self.abort()

    def commit(self) -> Path:
        """Write the marker, then put the finished folder in place of ``out`` (replacing an earlier result of this
        tool); release the lock. Returns ``out``."""
        from . import __version__

        if self.done:
            raise RuntimeError("this output folder claim is already finished")
        try:
            marker = {"format": MARKER_FORMAT, "version": 1, "tool_version": __version__,
                      "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (self.partial / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            _check_replaceable(self.out, self.overwrite)        # again: nothing foreign appeared meanwhile
            if self.out.is_dir() and any(self.out.iterdir()):
                # an empty sibling to rename the earlier result onto (same parent: no ".." to rewrite)
                old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old.", dir=self.out.parent))
                os.replace(self.out, old)
                try:
                    os.replace(self.partial, self.out)
                except BaseException:
                    os.replace(old, self.out)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.partial, self.out)              # a missing or empty folder is replaced atomically
        except BaseException:
            self.abort()
            raise
        self.done = True
        _release(self.lock)
        return self.out

    def abort(self) -> None:
        """Remove the temporary folder, the lock and the parent folders the claim created (when still empty)."""
        self.done = True
        shutil.rmtree(self.partial, ignore_errors=True)
        _release(self.lock)
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _check_replaceable(out: Path, overwrite: bool) -> None:
    if out.is_symlink():
        raise InputError("the output folder is a symbolic link; give the real folder", out)
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a folder", out)
    if not out.is_dir():
        return
    try:
        empty = not any(out.iterdir())
    except PermissionError:
        raise InputError("the output folder cannot be read (permission denied)", out) from None
    if empty:
        return
    if not overwrite:
        raise InputError("the output folder exists and is not empty (choose another or pass --overwrite)", out)
    if not carries_marker(out):
        raise InputError(f"the output folder was not written by orthodiffusion (no {MARKER_NAME}); --overwrite "
                         "replaces only earlier results of this tool: choose another folder", out)
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(f"the output folder holds files orthodiffusion did not write ({shown}); they are never "
                         "deleted: move them or choose another folder", out)
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError("the output folder cannot be replaced (permission denied)", out)


def _lock_owner_alive(lock: Path) -> bool:
    """Whether the process that holds ``lock`` still runs (True when unknown: another host, no owner file yet)."""
    try:
        owner = json.loads((lock / "owner.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # the owner file is written right after mkdir: give a young lock the benefit of the doubt
        with contextlib.suppress(OSError):
            return time.time() - lock.stat().st_mtime < 60
        return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _take_lock(lock: Path, out: PathLike) -> None:
    for attempt in range(2):
        try:
            os.mkdir(lock)
        except FileExistsError:
            if attempt == 0 and not _lock_owner_alive(lock):   # left by a killed run: take it over
                stale = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
                with contextlib.suppress(OSError):
                    os.rename(lock, stale)
                    shutil.rmtree(stale, ignore_errors=True)
                continue
            raise InputError(f"another orthodiffusion run is writing this output folder now (lock {lock.name}); "
                             "wait for it to finish or choose another folder", out) from None
        except PermissionError:
            raise InputError("cannot write the output folder here (permission denied)", out) from None
        except OSError as e:
            raise InputError(f"cannot write the output folder here ({e.strerror or e})", out) from None
        try:
            (lock / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}),
                                             encoding="utf-8")
        except OSError:
            pass
        return


def _release(lock: Path) -> None:
    shutil.rmtree(lock, ignore_errors=True)


def claim_output_folder(out: PathLike, *, overwrite: bool = False,
                        inputs: Iterable[Optional[PathLike]] = ()) -> OutputFolderClaim:
    """Claim ``out`` for one run's results (see the module docstring); call this before any work.

    Args:
        out: the output folder (need not exist; missing parents are created and removed again on abort).
        overwrite: allow replacing an earlier result folder of this tool.
        inputs: the run's input paths (None entries and paths that do not exist are skipped).

    Raises:
        InputError: the folder overlaps an input, is the current folder, is foreign or not empty, is being written
            by another run, or cannot be written.
    """
    given = out
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    check_apart_from_inputs(out, inputs)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        _check_replaceable(out, overwrite)
    created: List[Path] = []
    missing = [p for p in reversed(out.parents) if not p.exists()]
    try:
        for p in missing:
            p.mkdir()
            created.append(p)
    except OSError as e:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()
        why = "permission denied" if isinstance(e, PermissionError) else (e.strerror or str(e))
        raise InputError(f"cannot create the output folder ({why})", given) from None
    lock = out.parent / f".{out.name}{LOCK_SUFFIX}"
    try:
        _take_lock(lock, given)
    except BaseException:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    partial = None
    try:
        _check_replaceable(out, overwrite)
        try:
            partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial.", dir=out.parent))
        except PermissionError:
            raise InputError("cannot write the output folder here (permission denied)", given) from None
        except OSError as e:
            raise InputError(f"cannot write the output folder here ({e.strerror or e})", given) from None
    except BaseException:
        _release(lock)
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    return OutputFolderClaim(out, overwrite, lock, partial, created)


# ------------------------------------------------------------------------------------------------------ signals
class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside :func:`sigterm_raises` (cleaned up like
    Ctrl-C)."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = int(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (so ``finally``/``except`` clean-ups
    run as for Ctrl-C); the previous handler is restored afterwards. Elsewhere than the main thread: no effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["MARKER_NAME", "OUTPUT_PATTERNS", "OutputFolderClaim", "Terminated", "carries_marker",
           "check_apart_from_inputs", "claim_output_folder", "foreign_entries", "is_output_file_name",
           "is_tool_output", "sigterm_raises"]
