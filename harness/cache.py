"""The on-disk cache of a run's expensive work: trained backbones, fitted heads and attack runs.

Each entry is a file of tensors under a content hash of the configuration that produced it
(``<kind>/<key>.pt``), saved atomically and read with ``weights_only=True``. The configuration is
stored beside the tensors and checked on load, so an entry is never used for anything else; an
unreadable entry is reported and its work redone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import one_line

FORMAT = 2
KINDS = ("models", "heads", "attacks")


@dataclass(frozen=True)
class Entry:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


class ArtifactCache:
    def __init__(self, directory: Path, warn: Callable[[str], None]):
        self.directory = directory
        self.warn = warn

    def path(self, kind: str, key: str) -> Path:
        return self.directory / kind / f"{key}.pt"

    def load(self, kind: str, key: str, config: Mapping[str, Any]) -> Entry | None:
        """The entry, or None if it is absent or unusable (reported)."""
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(payload["meta"])
            if meta.get("format") != FORMAT or meta.get("config") != json.loads(json.dumps(config)):
                raise ValueError("it was written for another configuration")
            return Entry(dict(payload["tensors"]), meta)
        except Exception as exc:
            self.warn(f"cached {kind[:-1]} {path} is unusable ({one_line(exc)}); computing it again")
            return None

    def save(self, kind: str, key: str, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], **meta: Any) -> None:
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**meta, "format": FORMAT, "config": config})
        tmp = path.with_suffix(".tmp")
        torch.save({"tensors": {k: v.detach().cpu() for k, v in tensors.items()}, "meta": text}, tmp)
        tmp.replace(path)
