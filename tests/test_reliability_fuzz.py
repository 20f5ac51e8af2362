"""The fuzzer as part of the suite: a short seeded run over every format, and every reproducer it found.

The long run is `python -m tests.fuzz --minutes 30` (RELIABILITY.md has its figures).
"""

from __future__ import annotations

import json
import os

import pytest
from fuzz.regressions import load_store, outcome
from fuzz.runner import fuzz
from fuzz.seeds import SEEDS

# Seconds per format of the short run: 70 s in all for the ten seeds.
SECONDS = float(os.environ.get("SURGERY_FUZZ_SECONDS", "7"))


def test_a_short_seeded_fuzz_run_has_only_clean_outcomes(tmp_path):
    results = fuzz(list(SEEDS), seconds=SECONDS, base=13, timeout=20, repro_dir=tmp_path)
    report = {r.seed: dict(r.outcomes) for r in results}
    failures = [f"{case.seed}-{case.index} {kind}: {case.what}\n{detail}" for r in results for case, kind, detail in r.failures]
    assert not failures, f"{report}\n" + "\n".join(failures[:5]) + f"\nreproducers in {tmp_path}"
    assert all(r.cases >= 10 for r in results), report  # the run really ran
    assert all(r.outcomes["clean"] for r in results), report  # and its mutations really broke files


@pytest.mark.parametrize("case", load_store(), ids=lambda c: f"{c['seed']}:{c['found'][9:50]}")
def test_each_reproducer_gives_its_exact_message(case, tmp_path):
    assert outcome(case, tmp_path) == case["message"], json.dumps(case["patch"])[:200]


def test_ctrl_c_stops_inspect_on_a_file_hdf5_spins_on(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from fuzz.regressions import build
    from fuzz.seeds import REPO

    spinning = next(c for c in load_store() if "env" in c)  # one the fuzzer found hanging h5py
    path = build(spinning, tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from surgery.cli import main; main(sys.argv[1:])"), "inspect", str(path)],
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO), "SURGERY_READ_TIMEOUT": "60"},
    )
    time.sleep(3)  # imports done, the child stuck inside HDF5
    assert child.poll() is None
    child.send_signal(signal.SIGINT)
    started = time.monotonic()
    child.wait(10)
    assert time.monotonic() - started < 1.0
    assert child.stderr.read().decode().strip() == "error: interrupted (Ctrl-C); nothing was written, and no temporary file is left"


def test_a_killed_fuzz_child_leaves_no_work_folder(tmp_path):
    """A hang kills the child mid-case; its work folder (with the case's files) must go with it."""
    import time

    from fuzz.runner import _Child

    layouts = {n: (s.own_suffix, s.load) for n, s in SEEDS.items()}
    child = _Child(layouts, tmp_path / "child-0")
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "child-0").exists():  # the child makes it once its readers are imported
            assert time.monotonic() < deadline and not child.dead, "the child never started"
            time.sleep(0.05)
        (tmp_path / "child-0" / "input.h5").write_bytes(b"a case's file")
    finally:
        child.kill()
    assert list(tmp_path.iterdir()) == []
