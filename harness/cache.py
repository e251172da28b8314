"""The on-disk cache of a run's expensive work: trained backbones, fitted heads and attack runs.

Each entry is a file of tensors under a content hash of the configuration that produced it
(``<kind>/<key>.pt``), read with ``weights_only=True``. Beside the tensors it stores, as JSON, the
cache's ``FORMAT``, the configuration and a sha256 :func:`digest` of the tensors; all three are
checked on load, so an entry is never used for anything else and a damaged or altered one (zeroed
weights, replaced adversarial inputs) is never used at all: it is reported through ``warn``, its
work is done again and the entry rewritten. An entry that cannot be read is treated the same way.

An entry is serialised in memory and written with :func:`harness.files.write_atomically`: readers
see a whole entry or none, two processes saving the same entry each use their own temporary file
(the last rename wins whole), and a failed write leaves no temporary file behind. The cache is an
optimisation, so a folder that cannot be written (a full disk, a read-only or misnamed folder)
never costs a result: the first failure is reported once and the cache stops saving for the rest
of the run, while the work goes on. :meth:`ArtifactCache.check` probes the folder before any work
is done, so that this is said at the start of a run rather than after the first model is trained.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import one_line
from harness.files import describe, probe_folder, write_atomically

if TYPE_CHECKING:
    import torch

FORMAT = 3  # 3: entries carry a digest of their tensors
KINDS = ("models", "heads", "attacks", "training")


@dataclass(frozen=True)
class Entry:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


class _Unusable(Exception):
    """Why an entry that could be read cannot be used (said as is, without an exception type)."""


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """The sha256 (hex) of named tensors: for each name in sorted order, the name, dtype and shape
    and the tensor's raw bytes (of its contiguous CPU copy, viewed as bytes, so every dtype works:
    bool, bfloat16, complex, empty and zero-dimensional tensors alike)."""
    import torch

    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().resolve_conj().resolve_neg().contiguous()
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)])  # self-delimiting
        hasher.update(header.encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()


class ArtifactCache:
    """Entries under ``directory``; ``warn`` reports an unusable entry or a folder that cannot be
    written (once), after which :meth:`save` does nothing (``writable`` is False)."""

    def __init__(self, directory: Path, warn: Callable[[str], None]):
        self.directory = directory
        self.warn = warn
        self.writable = True

    def path(self, kind: str, key: str) -> Path:
        return self.directory / kind / f"{key}.pt"

    def keys(self, kind: str, prefix: str) -> list[str]:
        """The keys of the entries of ``kind`` whose key starts with ``prefix``."""
        return [path.stem for path in (self.directory / kind).glob(f"{prefix}*.pt")]

    def remove(self, kind: str, key: str) -> None:
        """Delete an entry if it is there (and the cache is writable)."""
        if self.writable:
            with contextlib.suppress(OSError):
                self.path(kind, key).unlink(missing_ok=True)

    def check(self) -> bool:
        """Probe, before any work, whether entries can be saved: make the cache folder and create
        and remove a temporary file in it and in each kind's folder that exists. If that fails,
        warn once and stop saving (loading still works). Returns ``writable``."""
        if not self.writable:
            return False
        try:
            if self.directory.exists() and not self.directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.directory))
            for folder in (self.directory, *(self.directory / kind for kind in KINDS)):
                if folder is self.directory or folder.exists():
                    probe_folder(folder, "probe")
        except OSError as exc:
            self._stop_saving(exc)
        return self.writable

    def load(self, kind: str, key: str, config: Mapping[str, Any]) -> Entry | None:
        """The entry, or None if it is absent or unusable (reported)."""
        path = self.path(kind, key)
        try:
            if not path.exists():
                return None
            import torch

            payload = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(payload["meta"])
            if meta.get("format") != FORMAT:
                raise _Unusable("it was written by another version of the harness")
            if meta.get("config") != json.loads(json.dumps(config)):
                raise _Unusable("it was written for another configuration")
            tensors = dict(payload["tensors"])
            if meta.get("digest") != digest(tensors):
                raise _Unusable("the tensors do not match their digest: the file was damaged or altered")
            return Entry(tensors, meta)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, _Unusable) else one_line(exc)
            self.warn(f"cached {kind[:-1]} {path} is unusable ({reason}); computing it again")
            return None

    def save(
        self, kind: str, key: str, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], **meta: Any
    ) -> None:
        """Store an entry, replacing any other; after a failed write (reported once), nothing."""
        if not self.writable:
            return
        cpu = {name: tensor.detach().cpu() for name, tensor in tensors.items()}
        text = json.dumps({**meta, "format": FORMAT, "config": config, "digest": digest(cpu)})
        buffer = io.BytesIO()
        import torch

        torch.save({"tensors": cpu, "meta": text}, buffer)
        try:
            write_atomically(self.path(kind, key), buffer.getvalue())
        except OSError as exc:
            self._stop_saving(exc)

    @contextlib.contextmanager
    def exclusive(self, kind: str, key: str) -> Iterator[None]:
        """Hold the entry's lock (``locks/<kind>-<key>.lock`` in the cache, an empty file, through
        ``filelock``) while the block computes it, so that two processes sharing the cache (a Ray cluster's workers, two
        runs) never compute one entry at the same time: the second waits, then finds it saved.
        Without a writable cache, no lock: each process computes its own."""
        if not self.writable:
            yield
            return
        from filelock import FileLock

        path = self.directory / "locks" / f"{kind}-{key}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path))
            lock.acquire()
        except OSError:
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def _stop_saving(self, exc: OSError) -> None:
        self.writable = False
        self.warn(f"cannot write to the cache {self.directory}: {describe(exc)}; continuing without caching")
