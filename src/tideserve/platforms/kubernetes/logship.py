"""Pod logs into the home's log files, one per instance, as the local platform's engines write theirs.

Shipping rather than reading on demand keeps one log pipeline: search by request or session id,
follow, `since`, rotation (observability/logs.py) and the console work the same on both platforms,
and a pod's lines outlive the pod (a crash's last words stay searchable after Kubernetes replaces it).
One thread per pod follows its stream; a broken stream is resumed from the last line's time, so a
resume may repeat at most the lines of that one second."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tideserve.platforms.kubernetes.api import KubeError

log = logging.getLogger(__name__)

RETRY_S = 5.0  # before reopening a stream that ended while its pod is still wanted

# (pod, since_seconds) -> the pod's log lines as they are written
Follow = Callable[[str, int | None], Iterator[str]]


@dataclass
class _Shipment:
    pod: str
    path: Path
    follow: Follow
    stop: threading.Event = field(default_factory=threading.Event)
    last_line_at: float | None = None

    def run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self.stop.is_set():
            since = None if self.last_line_at is None else int(time.time() - self.last_line_at) + 1
            try:
                # Opened per stream in append mode: rotation truncates the file under us (copy-truncate).
                with open(self.path, "a", encoding="utf-8") as out:
                    for line in self.follow(self.pod, since):
                        out.write(line + "\n")
                        out.flush()
                        self.last_line_at = time.time()
                        if self.stop.is_set():
                            return
            except KubeError as e:
                log.debug("log stream of pod %s: %s", self.pod, e)
            self.stop.wait(RETRY_S)


class LogShipper:
    def __init__(self) -> None:
        self._shipments: dict[str, tuple[_Shipment, threading.Thread]] = {}

    def ensure(self, key: str, pod: str, path: Path, follow: Follow) -> None:
        """Ship `pod`'s lines to `path` until retain() no longer lists `key`."""
        if key in self._shipments:
            return
        shipment = _Shipment(pod, path, follow)
        thread = threading.Thread(target=shipment.run, name=f"logs-{pod}", daemon=True)
        self._shipments[key] = (shipment, thread)
        thread.start()

    def retain(self, keys: set[str]) -> None:
        """Stop shipping for every key not in `keys` (its pod is gone)."""
        for key in set(self._shipments) - keys:
            shipment, _thread = self._shipments.pop(key)
            shipment.stop.set()  # the thread ends at its stream's next line or end

    def close(self) -> None:
        self.retain(set())
