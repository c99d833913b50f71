"""Plots and a Markdown table from a chaos run's JSON (benchmarks/results/chaos.json).

    .venv/bin/python -m benchmarks.chaos_report [chaos.json]

Writes docs/img/<stem>-recovery.png (per fault, each round's headline figure) and
docs/img/<stem>-reads.png (the secondaries' lowest answered-queries-per-second in each
round), <stem> being the JSON file's (chaos, chaos-default), and prints the table
docs/reliability.md carries. `scripts/chaos` runs it after every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
RESULTS = ROOT / "benchmarks" / "results"

# The figure that says most about each fault's recovery, in the order of preference.
HEADLINE = ("write_gap_s", "takeover_s", "takeover_after_kill_s", "takeover_after_resume_s",
            "resume_after_heal_s", "writes_resume_after_heal_s", "serving_after_repair_s",
            "restart_s")


def headline(figures: dict[str, Any]) -> tuple[str, float] | None:
    for key in HEADLINE:
        if isinstance(figures.get(key), int | float):
            return key, float(figures[key])
    return None


def table(report: dict[str, Any]) -> str:
    rows = ["| fault | rounds | violations | recovery figure | min | mean | max | "
            "secondaries' min answered q/s |", "|---|---|---|---|---|---|---|---|"]
    by_fault: dict[str, list[dict[str, Any]]] = {}
    for record in report["rounds"]:
        by_fault.setdefault(record["fault"], []).append(record)
    for fault, records in sorted(by_fault.items()):
        values = [h for r in records if (h := headline(r["figures"]))]
        name = values[0][0] if values else "-"
        numbers = [v for _, v in values]
        lows = [q for r in records for q in r.get("secondary_qps_min", []) if q is not None]
        violations = sum(len(r["violations"]) for r in records)
        spread = (f"{min(numbers):.2f} | {sum(numbers) / len(numbers):.2f} | "
                  f"{max(numbers):.2f}") if numbers else "- | - | -"
        low = f"{min(lows):.0f}" if lows else "-"
        rows.append(f"| {fault} | {len(records)} | {violations} | {name} | {spread} | {low} |")
    return "\n".join(rows)


def plots(report: dict[str, Any], stem: str, folder: Path = IMG) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    faults = sorted({r["fault"] for r in report["rounds"]})
    made = []

    fig, ax = plt.subplots(figsize=(9, 5))
    labels = []
    for i, fault in enumerate(faults):
        found = [h for r in report["rounds"] if r["fault"] == fault
                 and (h := headline(r["figures"]))]
        ax.scatter([i] * len(found), [v for _, v in found], alpha=0.7)
        labels.append(f"{fault}\n{found[0][0] if found else ''}")
    ax.set_xticks(range(len(faults)), labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("seconds (the figure under each fault)")
    ax.set_title(f"Chaos rounds: recovery per fault (timing {report['timing']}, "
                 f"{report['machine']['cpus']} CPUs)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = folder / f"{stem}-recovery.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(path)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, fault in enumerate(faults):
        lows = [q for r in report["rounds"] if r["fault"] == fault
                for q in r.get("secondary_qps_min", []) if q is not None]
        ax.scatter([i] * len(lows), lows, alpha=0.7)
    ax.set_xticks(range(len(faults)), faults, rotation=30, ha="right")
    ax.set_ylabel("lowest answered queries/s in a 1 s interval")
    ax.set_title("Secondaries' answer rate during each round (dnsperf, per secondary)",
                 fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = folder / f"{stem}-reads.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(path)
    return made


def report_and_plots(source: Path) -> None:
    """Print the table and write the plots, named after the JSON file's stem."""
    report = json.loads(source.read_text())
    print(table(report))
    # Results kept in the repository get their plots in docs/img; any other run's
    # plots go next to its JSON, so a scratch run never litters the docs.
    folder = IMG if source.resolve().parent == RESULTS else source.parent
    for path in plots(report, source.stem, folder):
        print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    report_and_plots(Path(args[0]) if args else RESULTS / "chaos.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
