"""Reading and fetching IDX files, the format of MNIST and Fashion-MNIST."""

from __future__ import annotations

import gzip
import hashlib
import urllib.request
from pathlib import Path

import numpy as np

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file, gzip-compressed or not; ``ValueError`` if it is malformed."""
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX data has {len(raw) - header} bytes, its header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_file(directories: list[Path], filename: str) -> Path | None:
    """``filename`` or ``filename.gz`` in the first directory that has it."""
    for directory in directories:
        for candidate in (directory / filename, directory / f"{filename}.gz"):
            if candidate.is_file():
                return candidate
    return None


def file_digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def download(urls: list[str], target: Path, algorithm: str, digest: str, timeout: float = 30.0) -> None:
    """Fetch the first URL that answers into ``target``, keeping it only if its checksum matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    failures = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, tmp.open("wb") as out:
                out.write(response.read())
        except OSError as exc:
            failures.append(f"{url}: {exc}")
            continue
        actual = file_digest(tmp, algorithm)
        if actual == digest:
            tmp.replace(target)
            return
        failures.append(f"{url}: {algorithm} {actual} does not match {digest}")
    tmp.unlink(missing_ok=True)
    raise OSError("; ".join(failures))
