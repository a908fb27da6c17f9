"""GPU readings through NVML (nvidia-ml-py): utilization, memory, temperature, power per device."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    index: int
    utilization: float  # 0..1, share of the last sample period a kernel ran
    memory_used: int  # bytes
    memory_total: int
    temperature_c: float
    power_w: float


class GpuReader:
    """Keeps NVML initialised between reads (init costs tens of ms); a machine without a driver reads
    as no GPUs, which is not an error."""

    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as e:  # ImportError, or NVMLError without a driver
            log.debug("NVML unavailable: %s", e)

    def read(self) -> list[GpuReading]:
        nv = self._nvml
        if nv is None:
            return []
        readings = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = self._memory(h)
                readings.append(
                    GpuReading(
                        index=i,
                        utilization=nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
                        memory_used=int(mem.used),
                        memory_total=int(mem.total),
                        temperature_c=float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                        power_w=nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                    )
                )
        except nv.NVMLError as e:  # a device fell off the bus mid-read: report what was read
            log.warning("NVML read failed: %s", e)
        return readings

    def _memory(self, handle: object) -> object:
        # v2 leaves out what the driver reserves, as nvidia-smi does; v1 counts it as used
        nv = self._nvml
        try:
            return nv.nvmlDeviceGetMemoryInfo(handle, version=nv.nvmlMemory_v2)
        except (AttributeError, TypeError, nv.NVMLError):  # an older driver or binding
            return nv.nvmlDeviceGetMemoryInfo(handle)

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None
