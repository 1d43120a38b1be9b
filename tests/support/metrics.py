"""Reading a server's Prometheus metrics (GET /metrics) in tests."""

from __future__ import annotations

import re

import httpx

from harness.services import ServerProcess


def metric(server: ServerProcess, sample: str, timeout: float = 20.0) -> float:
    """The value of `sample` (a metric's name with its labels, exactly as /metrics writes
    them) on a server process, or 0.0 if it is not there. A read that takes longer than
    `timeout` fails: the server hung."""
    text = httpx.get(f"{server.url}/metrics", timeout=timeout).text
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of metric `name` with `labels` (in that order) in the /metrics `text`, or
    0.0 if it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + ("{" + wanted + "}" if wanted else "")) + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0
