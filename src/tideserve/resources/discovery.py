"""What this machine has: CPUs, memory and NVIDIA GPUs (through NVML when the driver is present)."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field

import psutil

log = logging.getLogger(__name__)


@dataclass
class GPU:
    index: int
    name: str
    memory_bytes: int
    uuid: str


@dataclass
class MachineInfo:
    hostname: str
    cpus: int
    memory_bytes: int
    gpus: list[GPU] = field(default_factory=list)


def discover_gpus() -> list[GPU]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:  # no driver: a CPU machine, not an error
        log.debug("NVML unavailable: %s", e)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            gpus.append(
                GPU(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else name,
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def discover() -> MachineInfo:
    return MachineInfo(
        hostname=socket.gethostname(),
        cpus=psutil.cpu_count(logical=True) or 1,
        memory_bytes=psutil.virtual_memory().total,
        gpus=discover_gpus(),
    )
