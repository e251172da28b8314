"""Writing files safely: atomic replacement through a unique temporary file, and a check that a
path can be written before any work is done for it.

Every file the harness writes (leaderboards, outcomes, cache entries) goes through
:func:`write_atomically`: readers see the old file or the new one, never half of one, and two
writers of the same path each use their own temporary file, so the last rename wins whole.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import OutputError


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one step, through a synced temporary file of a unique name
    in its folder, with the permissions a plain ``open`` would give (``mkstemp`` makes files
    private). The temporary file never outlives a failure (a full disk, an interrupt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: Path, what: str) -> None:
    """Raise :class:`OutputError` unless ``path`` can be replaced by :func:`write_atomically`:
    a name that is not a folder, in a folder that exists (or can be made) and takes a new file of
    the temporary name's length. Nothing is left behind."""
    if path.name in ("", ".", ".."):
        raise OutputError(f"{what} '{path}' is not a file name")
    try:
        if path.is_dir():
            raise OutputError(f"{what} {path} is a folder")
        for folder in path.parents:
            if folder.exists():
                if not folder.is_dir():
                    raise OutputError(f"cannot write {what} {path}: {folder} is a file, not a folder")
                break
        probe_folder(path.parent, path.name)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {_short(path)}: {describe(exc)}") from None


def probe_folder(folder: Path, name: str) -> None:
    """Make ``folder`` if needed, then create and remove in it a temporary file named as
    :func:`write_atomically` names one for ``name``; raise the :class:`OSError` that a write there
    would meet (a read-only or full file system, a name too long, a parent that is a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    os.unlink(tmp)


def describe(exc: OSError) -> str:
    """An OS error as people read it: its reason, and the file it concerns when that is not
    already said (``[Errno 28] No space left on device`` becomes ``No space left on device``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason} ({_short(exc.filename)})" if exc.filename else reason


def _short(path: object, limit: int = 100) -> str:
    """A path for a one-line message: a name too long for the file system is cut in the middle."""
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"
