"""Cost: US dollars per million inferences, from a device price and measured throughput."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# On-demand list prices (USD/hour) of common cloud instances, divided down to the unit a trial
# occupies: one vCPU for CPU measurements, one GPU for GPU ones. They are defaults; a study file's
# [cost] table overrides them with what the user actually pays.
DEFAULT_CPU_CORE_USD_PER_HOUR = 0.0425
DEFAULT_GPU_USD_PER_HOUR: dict[str, float] = {
    "T4": 0.53,
    "L4": 0.80,
    "A10G": 1.01,
    "A100": 3.67,
    "H100": 6.98,
    "H200": 10.6,
}


@dataclass(frozen=True)
class CostModel:
    """Prices per device unit. ``usd_per_million`` turns a measurement into a cost."""

    cpu_core_usd_per_hour: float = DEFAULT_CPU_CORE_USD_PER_HOUR
    gpu_usd_per_hour: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GPU_USD_PER_HOUR))

    def price_per_hour(self, device_kind: str, threads: int, gpu_name: str = "") -> float:
        if device_kind == "cpu":
            return self.cpu_core_usd_per_hour * max(threads, 1)
        # Whole-token match: a plain substring test would price an "NVIDIA L40S" as an "L4".
        for key, price in self.gpu_usd_per_hour.items():
            if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", gpu_name, re.IGNORECASE):
                return price
        return max(self.gpu_usd_per_hour.values())

    def usd_per_million(self, latency_ms: float, batch_size: int, price_per_hour: float) -> float:
        """Cost of one million inferences at ``batch_size`` requests per ``latency_ms`` run."""
        seconds_per_inference = latency_ms / 1000.0 / batch_size
        return price_per_hour / 3600.0 * seconds_per_inference * 1e6
