"""The model versions served right now: added and removed at run time, found by name, version or weights.

A served version is keyed by `(name, checkpoint_sha256)`: the digest of the weights is what a session's
state means something to, so sessions, batchers and snapshots are all keyed by it (`SessionRecord.key`).
The version number is the folder's name, for people and for `CreateSession.version`; within one name both
the number and the digest are unique. A version being unloaded takes no new sessions but keeps serving its
live ones until `remove` (ntm_serve/server/lifecycle.py decides when).

Read as a `Mapping[str, ServedModel]` the set is the newest version of each name (what the original
one-version-per-name code and tests index by name).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from ntm_serve.api.errors import ServiceError, invalid, not_found, unavailable

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import Engine, ModelSpec
    from ntm_serve.server.batcher import Batcher

Key = tuple[str, str]  # (model name, checkpoint_sha256)


@dataclass(frozen=True)
class ServedModel:
    spec: ModelSpec
    provider: str
    batcher: Batcher
    version: int = 1

    @property
    def key(self) -> Key:
        return self.spec.name, self.spec.checkpoint_sha256

    @property
    def label(self) -> str:
        return f"{self.spec.name} version {self.version}"


def short(digest: str) -> str:
    return digest[:12] + "…" if len(digest) > 12 else digest


def weights_missing(name: str, digest: str, retryable: bool = False) -> ServiceError:
    """The refusal of a session (restored, imported or taken over) whose weights this server does not serve.
    `retryable` (UNAVAILABLE) is for a replica of a cluster: another replica, or this one a poll later, may
    serve them; a single server says FAILED_PRECONDITION. Either way the message names the full digest."""
    text = (f"the session's state was made by other weights than this server serves: model {name!r} at "
            f"checkpoint_sha256 {digest} is not loaded; load that version (ModelAdmin.LoadModel, or put its folder "
            "under the models directory)")
    if retryable:
        return unavailable(text + "; retry: another replica may serve it")
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, text)


class ModelSet(Mapping[str, "ServedModel"]):
    """Thread-safe; `batchers` and `engines` are live mappings by key (the session registry and the
    snapshotter read them as versions come and go)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: dict[Key, ServedModel] = {}
        self._unloading: set[Key] = set()
        self.batchers: dict[Key, Batcher] = {}
        self.engines: dict[Key, Engine] = {}

    # --- changes --------------------------------------------------------------------------------------

    def conflict(self, name: str, version: int, digest: str) -> str | None:
        """Why a version with this number and these weights cannot be added, or None."""
        with self._lock:
            for model in self._served.values():
                if model.spec.name != name:
                    continue
                if model.version == version:
                    return f"{model.label} is loaded already (checkpoint_sha256 {short(model.spec.checkpoint_sha256)})"
                if model.spec.checkpoint_sha256 == digest:
                    return f"its weights are served already as {model.label} (checkpoint_sha256 {short(digest)})"
        return None

    def stage(self, model: ServedModel) -> None:
        """Make a version's engine and batcher reachable by key (for restoring its sessions) before it is
        served: not listed, takes no new sessions until `publish`."""
        problem = self.conflict(model.spec.name, model.version, model.spec.checkpoint_sha256)
        if problem is not None:
            raise ValueError(problem)
        with self._lock:
            self.engines[model.key] = model.batcher.engine
            self.batchers[model.key] = model.batcher

    def publish(self, model: ServedModel) -> None:
        with self._lock:
            self._served[model.key] = model

    def add(self, model: ServedModel) -> None:
        self.stage(model)
        self.publish(model)

    def begin_unload(self, key: Key) -> None:
        with self._lock:
            if key in self._served:
                self._unloading.add(key)

    def cancel_unload(self, key: Key) -> bool:
        """The version takes sessions again; False when it was not being unloaded."""
        with self._lock:
            if key not in self._unloading:
                return False
            self._unloading.discard(key)
            return True

    def remove(self, key: Key) -> ServedModel | None:
        """Take a version out (its batcher is the caller's to stop)."""
        with self._lock:
            self._unloading.discard(key)
            self.batchers.pop(key, None)
            self.engines.pop(key, None)
            return self._served.pop(key, None)

    def put_back(self, model: ServedModel, unloading: bool) -> None:
        """Undo a `remove` that raced with a session being opened."""
        with self._lock:
            self._served[model.key] = model
            self.engines[model.key] = model.batcher.engine
            self.batchers[model.key] = model.batcher
            if unloading:
                self._unloading.add(model.key)

    # --- lookups --------------------------------------------------------------------------------------

    def every(self) -> list[ServedModel]:
        """Every served version (also those being unloaded), by name then version."""
        with self._lock:
            return sorted(self._served.values(), key=lambda m: (m.spec.name, m.version))

    def unloading(self, key: Key) -> bool:
        return key in self._unloading

    def get_key(self, key: Key) -> ServedModel | None:
        return self._served.get(key)

    def version(self, name: str, version: int) -> ServedModel | None:
        with self._lock:
            return next((m for m in self._served.values() if m.spec.name == name and m.version == version), None)

    def _newest(self, name: str) -> ServedModel | None:
        """Under the lock: the highest version of `name` not being unloaded."""
        taking = [m for k, m in self._served.items() if m.spec.name == name and k not in self._unloading]
        return max(taking, key=lambda m: m.version, default=None)

    def resolve(self, name: str, version: int | None = None) -> ServedModel:
        """The version a new session of `name` runs on: `version`, or the newest one taking sessions."""
        if not name:
            raise invalid("model is required")
        if version is not None and version < 1:
            raise invalid(f"version must be >= 1 (or absent: the newest), got {version}")
        with self._lock:
            versions = sorted(m.version for m in self._served.values() if m.spec.name == name)
            if not versions:
                raise not_found(f"unknown model {name!r}; ListModels lists them")
            if version is None:
                model = self._newest(name)
                if model is None:
                    raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"every version of model {name!r} is being unloaded: no new sessions")
                return model
            model = next((m for m in self._served.values() if m.spec.name == name and m.version == version), None)
            if model is None:
                raise not_found(f"model {name!r} has no version {version}; served versions: {versions}")
            if model.key in self._unloading:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"{model.label} is being unloaded: no new sessions (served versions: {versions})")
            return model

    def weights(self, name: str, digest: str, retryable: bool = False) -> ServedModel:
        """The version of `name` with exactly these weights (any version number), else `weights_missing`."""
        if not name:
            raise invalid("model is required")
        model = self._served.get((name, digest))
        if model is None:
            if not any(m.spec.name == name for m in self.every()):
                raise not_found(f"unknown model {name!r}; ListModels lists them")
            raise weights_missing(name, digest, retryable)
        return model

    # --- Mapping: the newest version of each name -----------------------------------------------------

    def __getitem__(self, name: str) -> ServedModel:
        with self._lock:
            found = [m for m in self._served.values() if m.spec.name == name]
        if not found:
            raise KeyError(name)
        return max(found, key=lambda m: m.version)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({m.spec.name for m in self.every()}))

    def __len__(self) -> int:
        return len({m.spec.name for m in self.every()})
