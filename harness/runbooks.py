"""The runbooks' shell blocks, as printed, for the tests and the chaos rounds that run
them: what an operator would paste is what gets run."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs/runbooks"
JOURNAL_RUNBOOK = DOCS / "journal-out-of-sync.md"


def runbook_block(marker: str, runbook: Path = JOURNAL_RUNBOOK) -> str:
    """The shell block after ``<!-- test: marker -->`` in ``runbook``."""
    text = runbook.read_text()
    found = re.search(rf"<!-- test: {marker} -->\s*```sh\n(.*?)```", text, re.S)
    if found is None:
        raise AssertionError(f"no block marked {marker} in {runbook}")
    return "\n".join(line.strip() for line in found.group(1).splitlines())


def repair_intact(dyn: Path, zone: str, file_name: str, intact_bytes: int,
                  timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Step 3 of the journal runbook: keep a damaged journal's intact part."""
    env = {**os.environ, "DYN": str(dyn), "ZONE": zone, "FILE": file_name,
           "BYTES": str(intact_bytes)}
    return subprocess.run(["sh", "-c", runbook_block("repair-intact")], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
