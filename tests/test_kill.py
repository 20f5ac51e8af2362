"""Kill tests: SIGKILL writes at random points and at each step of the replace path.

After every kill: the input's sha256 is unchanged; the destination is the old one or the
complete new one (with the rename fallback, a kill between its two renames hides the old
one under `.old-`, and the next run puts it back); the next run removes every leftover.

The short variant (every step of the replace path, both swap methods, a folder replacing a
folder with and without --no-sync, and a few random kills) runs with the suite;
`SURGERY_KILL_TRIALS=200 pytest -m slow tests/test_kill.py` runs the long one.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import digest

import surgery
from surgery import atomic
from surgery.tree import Entry, Tree

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


@dataclass(frozen=True)
class Job:
    """One command whose output replaces an existing one."""

    name: str
    args: tuple[str, ...]  # after `surgery`; {src} and {dst} are filled in
    dst: str
    source: str  # "big" (a generated safetensors file) or a fixture's name


JOBS = [
    Job("convert file", ("convert", "{src}", "-o", "{dst}", "--force", "-q"), "out.npz", "big"),
    Job("convert sharded", ("convert", "{src}", "-o", "{dst}", "--shard-size", "1MB", "--force", "-q"), "shards", "big"),
    Job("subsample", ("subsample", "{src}", "-o", "{dst}", "--classes", "0,3,5", "--force", "-q"), "ssd.h5", "ssd300_coco_tiny.h5"),
    Job("convert file over folder", ("convert", "{src}", "-o", "{dst}", "--to", "safetensors", "--force", "-q"), "shards", "big"),
    # No fsyncs, the same renames: a killed process still leaves old-or-new (only a machine crash may not).
    Job("convert sharded no-sync", ("convert", "{src}", "-o", "{dst}", "--shard-size", "1MB", "--force", "-q", "--no-sync"), "shards", "big"),
]


def big_input(folder: Path) -> Path:
    rng = np.random.default_rng(7)
    tree = Tree([Entry.from_array(f"layer{k}.weight", rng.standard_normal((256, 512)).astype(np.float32)) for k in range(6)])
    path = folder / "big.safetensors"
    surgery.save(tree, path)
    return path


def cli(args: list[str], env: dict[str, str] | None = None, kill_after: float | None = None) -> int:
    """Run `surgery ARGS` in a forked child (no interpreter start-up, so kills land inside the
    work); return its exit code, -9 when it was killed."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.environ.update(env or {})
            from surgery.cli import main

            main(args, prog_name="surgery")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + (kill_after if kill_after is not None else 120)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.002)


class Trial:
    """A folder with an input, an old output and the expected new output of one job."""

    def __init__(self, root: Path, job: Job) -> None:
        self.job, self.root = job, root
        self.work = root / "work"
        self.work.mkdir()
        self.src = big_input(root) if job.source == "big" else Path(shutil.copy(FIXTURES / job.source, root / job.source))
        self.input_digest = digest(self.src)
        self.dst = self.work / job.dst
        if job.name == "convert file over folder":  # the old output is a sharded folder
            assert cli(["convert", str(self.src), "-o", str(self.dst), "--shard-size", "1MB", "-q"]) == 0
        else:  # the old output: the same job on an older input
            old_src = root / ("old" + self.src.suffix)
            if job.source == "big":  # tiny.safetensors in float32: npz holds no bfloat16
                assert cli(["convert", str(FIXTURES / "tiny.safetensors"), "-o", str(old_src), "--dtype", "float32", "-q"]) == 0
            else:
                shutil.copy(self.src, old_src)
            old_args = [{"0,3,5": "0,1"}.get(a, a) for a in job.args]  # subsample: other classes
            assert cli([a.format(src=old_src, dst=self.dst) for a in old_args]) == 0
        self.old_digest = digest(self.dst)
        fresh = root / "fresh"
        fresh.mkdir()
        assert cli([a.format(src=self.src, dst=fresh / job.dst) for a in job.args]) == 0
        self.new_digest = digest(fresh / job.dst)
        shutil.rmtree(fresh)
        assert self.new_digest != self.old_digest
        self.snapshot = root / "snapshot"
        shutil.copytree(self.work, self.snapshot, symlinks=True)

    def reset(self) -> None:
        shutil.rmtree(self.work)
        shutil.copytree(self.snapshot, self.work, symlinks=True)

    def run(self, env: dict[str, str] | None = None, kill_after: float | None = None) -> int:
        return cli([a.format(src=self.src, dst=self.dst) for a in self.job.args], env, kill_after)

    def check(self, how: str) -> str:
        """After a kill: what the destination is; then clean up as the next run would and check again."""
        assert digest(self.src) == self.input_digest, f"{how}: the input changed"
        state = self._state()
        hidden = state == "absent"
        if hidden:  # only the rename fallback may hide the old output for a moment
            assert any(".old-" in p.name for p in self.work.iterdir()), f"{how}: the destination is gone"
        cleaned = [x for x in atomic.clean_leftovers(self.work) if x.action != "kept"]
        after = self._state()
        assert after in ("old", "new"), f"{how}: after cleaning the destination is {after}"
        if hidden:
            assert after == "old", how
        assert [p.name for p in self.work.iterdir()] == [self.dst.name], f"{how}: leftovers {os.listdir(self.work)}"
        if hidden:
            return "hidden, restored"
        return f"{state}, leftover removed" if cleaned else state

    def _state(self) -> str:
        if not (self.dst.exists() or self.dst.is_symlink()):
            return "absent"
        found = digest(self.dst)
        if found == self.old_digest:
            return "old"
        assert found == self.new_digest, "the destination is neither the old output nor the complete new one"
        return "new"


SWAPS = {"exchange": {}, "rename": {atomic.NO_EXCHANGE: "1"}}


SHORT = ("convert sharded", "convert sharded no-sync")  # the jobs of the short variant: a folder replacing a folder
STEP_CASES = [pytest.param(job, marks=() if job.name in SHORT else pytest.mark.slow, id=job.name) for job in JOBS]


@pytest.mark.parametrize("job", STEP_CASES)
@pytest.mark.parametrize("swap", SWAPS)
def test_a_kill_at_each_step_of_the_replace_path(tmp_path, job, swap):
    if swap == "exchange" and atomic._EXCHANGE is None:
        pytest.skip("renameat2 is not available here")
    trial = Trial(tmp_path, job)
    seen = {}
    for step in atomic.STEPS:
        trial.reset()
        code = trial.run({**SWAPS[swap], atomic.KILL_AT: step})
        seen[step] = (code, trial.check(f"{job.name}, {swap}, killed at {step}"))
    folder_swap = job.dst == "shards"
    if swap == "exchange" and folder_swap:
        assert seen["exchanged"] == (-9, "new, leftover removed")  # the old copy under the temporary name
    if swap == "rename" and folder_swap:
        assert seen["aside"] == (-9, "hidden, restored")
    assert seen["written"] == (-9, "old, leftover removed")


def random_kills(tmp_path: Path, trials: int, seed: int, jobs: list[Job] = JOBS) -> dict[str, int]:
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    prepared = {}
    for job in jobs:
        root = tmp_path / job.name.replace(" ", "-")
        root.mkdir()
        trial = Trial(root, job)
        started = time.monotonic()
        trial.reset()
        assert trial.run() == 0
        prepared[job.name] = (trial, time.monotonic() - started)
    for k in range(trials):
        job = jobs[k % len(jobs)]
        trial, duration = prepared[job.name]
        swap = rng.choice(list(SWAPS))
        trial.reset()
        trial.run(SWAPS[swap], kill_after=rng.uniform(0, duration * 1.1))
        state = trial.check(f"{job.name}, {swap}, trial {k}")
        outcomes[state] = outcomes.get(state, 0) + 1
    return outcomes


def test_a_few_kills_at_random_points(tmp_path):
    outcomes = random_kills(tmp_path, 6, seed=1, jobs=[j for j in JOBS if j.name in SHORT])
    assert sum(outcomes.values()) == 6


@pytest.mark.slow
def test_many_kills_at_random_points(tmp_path):
    trials = int(os.environ.get("SURGERY_KILL_TRIALS", "40"))
    outcomes = random_kills(tmp_path, trials, seed=2)
    print(f"\n{trials} random kills: {outcomes}")
    assert sum(outcomes.values()) == trials
