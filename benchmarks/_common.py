"""Helpers shared by the benchmark scripts: peak-memory probes, CPU-load check, child processes."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import torch

RESULT_MARKER = "@@BENCH_RESULT@@ "


# ------------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """Peak memory growth of this process from `start()` on.

    CPU: the kernel's resident high-water mark (VmHWM), reset at `start()` through /proc/self/clear_refs, minus
    the RSS at `start()`. Where the reset is not allowed, falls back to getrusage's ru_maxrss (which can then only
    under-report if the process was already bigger before `start()`; `hwm_reset` says which was used).
    CUDA: torch.cuda.max_memory_allocated minus memory_allocated at `start()`.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.hwm_reset = False
        self.baseline = 0

    def start(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.baseline = rss_bytes()

    def peak_growth(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        hwm = _status_kib("VmHWM") if self.hwm_reset else None
        peak = hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self.baseline, 0)

    def describe(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated growth"
        if self.hwm_reset:
            return "peak RSS growth (VmHWM reset via /proc/self/clear_refs)"
        return "peak RSS growth (ru_maxrss)"


# ------------------------------------------------------------------------------------------ CPU load
def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over `seconds` (everything on the machine, this process included)."""

    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def warn_if_busy(label: str) -> float | None:
    busy = cpu_busy_fraction()
    if busy is not None:
        note = "  <-- something else is using the CPU; timings are unreliable" if busy > 0.15 else ""
        print(f"[{label}] CPU busy (whole machine, 1 s sample): {busy:.0%} of {os.cpu_count()} cores{note}", flush=True)
    return busy


# ------------------------------------------------------------------------------------------ children
def emit_result(result: dict) -> None:
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_child(args: list[str], label: str, timeout: float | None = None) -> dict:
    """Run `python <args>` in a fresh process; stream its output; return the dict it emitted."""
    print(f"\n--- {label}: {' '.join(args)}", flush=True)
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
        else:
            sys.stdout.write("    " + line)
            sys.stdout.flush()
    code = proc.wait(timeout=timeout)
    if code != 0 or result is None:
        return {"error": f"{label} exited with code {code}"}
    return result


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20
