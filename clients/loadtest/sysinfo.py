"""What the report says about the machine and the server processes (Linux /proc)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def host() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """Direct children of `pid` (scans /proc; empty when unreadable)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return sorted(out)


def with_children(pids: list[int]) -> list[int]:
    seen: list[int] = []
    for p in pids:
        for q in [p, *children(p)]:
            if q not in seen:
                seen.append(q)
    return seen


def proc_sample(pid: int) -> dict | None:
    """CPU seconds (user + system) and resident memory (MiB) of a process; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat)
    rss_kb = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
            break
    return {"cpu_s": cpu, "rss_mib": rss_kb / 1024}


def proc_delta(
    before: dict[int, dict | None], after: dict[int, dict | None], seconds: float
) -> list[dict]:
    out = []
    for pid, b in before.items():
        a = after.get(pid)
        row = {
            "pid": pid,
            "rss_start_mib": b["rss_mib"] if b else None,
            "rss_end_mib": a["rss_mib"] if a else None,
        }
        row["cpu_cores"] = (a["cpu_s"] - b["cpu_s"]) / seconds if a and b and seconds > 0 else None
        out.append(row)
    return out
