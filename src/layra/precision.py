"""Which precision to compute in, chosen from the hardware it runs on.

    from layra.precision import resolve_precision
    p = resolve_precision("auto", device="cpu")
    print(p.line())  # precision: fp32 — this CPU has no fast bf16 matmul (0.2 vs 20.9 GFLOP/s)

bf16 is worth it only where the device multiplies bf16 natively: CUDA GPUs with
bf16 support, and CPUs with AVX512-BF16 or AMX (there about 2-3x faster than fp32).
On an AVX2-only CPU PyTorch falls back to a reference loop and bf16 matmul is about
100x *slower* than fp32, so a hard-coded bf16 default makes training unusable there.
CPU flags alone do not say which kernel PyTorch will pick, so on a CPU the choice
comes from a short measurement (well under a second), made once per process.

On x86, ``auto`` picks bf16 when the CPU has AVX512-BF16 or AMX and the probe does not
find bf16 far slower (:data:`BF16_VETO`); elsewhere only when the probe finds it clearly
faster (:data:`BF16_MIN_SPEEDUP`). An explicit ``bf16`` is obeyed, with a one-line
warning where it is slow.
"""

from __future__ import annotations

import functools
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from layra.errors import LayraError

PRECISIONS = ("auto", "bf16", "fp32")
# Where the CPU flags are unknown (not x86), auto takes bf16 only when the probe finds it
# at least this much faster than fp32: near 1x its noise could flip the choice.
BF16_MIN_SPEEDUP = 1.2
# Where the flags say native bf16 (AVX512-BF16/AMX), the probe only vetoes: a kernel path
# gone wrong is ~100x slower, far below this, while load on a busy machine moves a short
# probe by 2x either way and must not flip the choice between processes.
BF16_VETO = 0.5
_ALIASES = {"bfloat16": "bf16", "float32": "fp32", "fp32": "fp32", "bf16": "bf16", "auto": "auto"}


def normalize_precision(name: str) -> str:
    """``auto``, ``bf16`` or ``fp32`` (``bfloat16`` / ``float32`` accepted as spellings)."""
    key = str(name).strip().lower().replace("torch.", "")
    if key not in _ALIASES:
        raise LayraError(f"precision must be one of auto, bf16, fp32; got {name!r}")
    return _ALIASES[key]


@dataclass(frozen=True)
class MatmulProbe:
    """Measured matmul speed of this CPU in fp32 and bf16 (best of a few repeats)."""

    fp32_gflops: float
    bf16_gflops: float
    shape: tuple[int, int, int]  # (m, k, n) of the probe's m x k @ k x n
    threads: int

    @property
    def speedup(self) -> float:
        """bf16 GFLOP/s over fp32 GFLOP/s (>1: bf16 is faster)."""
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops > 0 else 0.0


def _gflops(dtype: torch.dtype, m: int, k: int, n: int, budget_s: float) -> float:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    a @ b  # first call builds the kernel (oneDNN primitive), not timed
    best = float("inf")
    start = time.perf_counter()
    for _ in range(50):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return 2 * m * k * n / best / 1e9


@functools.lru_cache(maxsize=1)
def probe_cpu_matmul() -> MatmulProbe:
    """Time fp32 and bf16 matmul on one core of this CPU (cached: once per process).

    The shape is a small slice of a transformer layer's work (128 x 256 @ 256 x 512,
    34 MFLOP): big enough to reach the vector units' speed, small enough that the
    reference loop on an AVX2-only CPU (~0.2 GFLOP/s) costs a fraction of a second.
    One thread: the question is which kernel the CPU runs, and on a busy machine a
    multi-threaded kernel waits at every barrier for a descheduled thread (seen here:
    bf16 read 2.1 vs fp32 108 GFLOP/s on an AVX512-BF16 CPU under load 5).
    """
    m, k, n = 128, 256, 512
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32 = _gflops(torch.float32, m, k, n, budget_s=0.1)
        bf16 = _gflops(torch.bfloat16, m, k, n, budget_s=0.1)
    finally:
        torch.set_num_threads(threads)
    return MatmulProbe(round(fp32, 2), round(bf16, 2), (m, k, n), 1)


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """CPU model name and the flags that decide bf16 speed (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": model, "flags": [f for f in wanted if f in flags], "cores": _cores()}


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@dataclass(frozen=True)
class Precision:
    """The precision a process computes in, and why."""

    name: Literal["bf16", "fp32"]
    requested: str
    device: str  # "cpu" or "cuda"
    reason: str
    probe: MatmulProbe | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def mixed_precision(self) -> str:
        """accelerate's ``mixed_precision`` value."""
        return "bf16" if self.name == "bf16" else "no"

    def line(self) -> str:
        return f"precision: {self.name} — {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (run.json, provenance, results) with the CPU it came from."""
        out: dict[str, Any] = {
            "name": self.name,
            "requested": self.requested,
            "device": self.device,
            "reason": self.reason,
            "probe": asdict(self.probe) if self.probe else None,
        }
        if self.device == "cpu":
            out["cpu"] = cpu_info()
        else:
            out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        return out


def _device_type(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if str(device).startswith("cuda") else "cpu"


def native_bf16_flags() -> bool | None:
    """Whether the CPU advertises native bf16 matmul (AVX512-BF16 or AMX); None if unknown."""
    info = cpu_info()
    if not Path("/proc/cpuinfo").is_file() or platform.machine() not in ("x86_64", "AMD64"):
        return None
    return any(f in info["flags"] for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(
    requested: str = "auto", device: str = "auto", deterministic: bool = False
) -> Precision:
    """Decide the precision for ``device`` (``auto``, ``cpu``, ``cuda``; see module doc).

    On an x86 CPU without AVX512-BF16 or AMX, ``auto`` is fp32 whatever the probe
    says. ``deterministic`` decides from the CPU flags alone, with no timing: the
    ranks of a multi-process run must agree, and a probe's noise could split them.
    """
    req = normalize_precision(requested)
    dev = _device_type(device)
    if dev == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if req == "fp32":
            return Precision("fp32", req, dev, "asked for (fp32)")
        if req == "bf16":
            why = "asked for" if ok else "asked for, though this GPU reports no bf16 support"
            return Precision("bf16", req, dev, why)
        if ok:
            return Precision("bf16", req, dev, "this GPU multiplies bf16 natively")
        return Precision("fp32", req, dev, "this GPU has no bf16 support")
    if req == "fp32":
        return Precision("fp32", req, dev, "asked for (fp32)")
    native = native_bf16_flags()
    if deterministic:
        name = "bf16" if (req == "bf16" or native) else "fp32"
        has = "has" if native else "lacks" if native is False else "may lack"
        why = "asked for" if req == "bf16" else "decided from CPU flags alone (multi-process)"
        return Precision(name, req, dev, f"{why}; this CPU {has} AVX512-BF16/AMX")
    probe = probe_cpu_matmul()
    speeds = f"{probe.bf16_gflops:.3g} vs {probe.fp32_gflops:.3g} GFLOP/s bf16 vs fp32 matmul"
    if native is None:
        fast = probe.speedup >= BF16_MIN_SPEEDUP
    else:
        fast = native and probe.speedup >= BF16_VETO
    if req == "bf16":
        reason = f"asked for ({speeds})"
        if not fast:
            reason += "; SLOW on this CPU: fp32 or precision auto would be faster"
        return Precision("bf16", req, dev, reason, probe)
    if fast:
        return Precision("bf16", req, dev, f"this CPU multiplies bf16 fast ({speeds})", probe)
    no = "has no AVX512-BF16/AMX" if native is False else "has no fast bf16 matmul"
    return Precision("fp32", req, dev, f"this CPU {no} ({speeds})", probe)


_announced: set[str] = set()


def announce(p: Precision, say=None) -> None:
    """Print the decision once per process (a sweep or demo resolves it many times).

    An explicit bf16 on a CPU where it is slow is a warning and goes to stderr.
    """
    line = p.line()
    if line in _announced:
        return
    _announced.add(line)
    if p.requested == "bf16" and "SLOW" in p.reason:
        print(f"layra: warning: {line}", file=sys.stderr, flush=True)
    elif say is not None:
        say(line)
    else:
        print(line, flush=True)
