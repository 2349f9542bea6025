"""What machine a benchmark ran on, for its JSON lines.

The lent machines differ between sessions (an AVX2 Zen 3 and an AVX-512 Zen 5
both answer "AMD EPYC"), and figures are comparable only on the same one.
"""

from __future__ import annotations

import os
import platform


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags


def machine() -> dict:
    """``cpu`` (model name), ``isa`` (widest x86 vector extension), ``cpus`` and the 1-minute load."""
    model, flags = _cpuinfo()
    isa = next((name for name, flag in (("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2"))
                if flag in flags), platform.machine())
    return {"cpu": model, "isa": isa, "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}
