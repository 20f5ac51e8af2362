"""`python -m tests.fuzz [--minutes 30] [--formats npz,keras_h5] [--seed 0] [--repro DIR]`: the long run.

Prints a table per format (the one in RELIABILITY.md) and saves every non-clean case
under --repro (default fuzz-repro/).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .runner import OUTCOMES, fuzz
from .seeds import SEEDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, default=1.0, help="total time, shared equally by the formats")
    parser.add_argument("--cases", type=int, help="cases per format instead of a time budget")
    parser.add_argument("--formats", default=",".join(SEEDS), help=f"comma-separated, of: {', '.join(SEEDS)}")
    parser.add_argument("--seed", type=int, default=0, help="base seed; a case is (format, seed, index)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    parser.add_argument("--repro", type=Path, default=Path("fuzz-repro"), help="where non-clean cases are saved")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.formats.split(",") if n.strip()]
    unknown = [n for n in names if n not in SEEDS]
    if unknown:
        parser.error(f"unknown format {unknown[0]!r}; choose from {', '.join(SEEDS)}")
    seconds = None if args.cases else args.minutes * 60 / len(names)
    last = [time.monotonic()]

    def progress(name: str, index: int, kind: str) -> None:
        if kind not in ("success", "clean") or time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(f"  {name}: {index} cases{'' if kind in ('success', 'clean') else ', ' + kind}", file=sys.stderr, flush=True)

    results = fuzz(names, seconds=seconds, cases=args.cases, base=args.seed, timeout=args.timeout, repro_dir=args.repro, progress=progress)
    print(table(results))
    for r in results:
        print(f"\n{r.seed}: most common clean errors")
        for kind, count in r.messages.most_common(8):
            print(f"  {count:6d}  {kind}")
        for case, kind, detail in r.failures[:10]:
            print(f"  {kind}: {r.seed}-{case.index} {case.what}\n    {detail.strip().splitlines()[-1] if detail.strip() else ''}")
    return 1 if any(r.failures for r in results) else 0


def table(results) -> str:
    head = "| format | cases | cases/s | " + " | ".join(OUTCOMES) + " |"
    rows = [head, "|" + "---|" * (3 + len(OUTCOMES))]
    for r in results:
        rate = r.cases / r.seconds if r.seconds else 0
        rows.append(f"| {r.seed} | {r.cases} | {rate:.0f} | " + " | ".join(str(r.outcomes[o]) for o in OUTCOMES) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
