"""Benchmark: ways to make a large copy durable, side by side (the choice behind surgery.output_file).

Method: a seeded file of SIZE bytes is written (untimed) and read once, so it is in the page
cache; then, in each round, every strategy copies it once in this process, in turn, with an
untimed `sync` before each run and the output deleted after it. Medians of the rounds.
  cp, cpsync           cp SRC DST; and cp SRC DST && sync
  nosync, fsync        copy_file_range in 32 MB calls; without, and with, one fsync at the end
  inline               the same, with sync_file_range(WRITE) on each 32 MB as it is copied
  thread               the writeback requests made from a second thread
  behind, behind_thread  writeback requested, and waited for 8 ranges behind (bounded dirty memory)
  direct               buffered reads into page-aligned buffers, O_DIRECT writes from another thread
  output_file          surgery.output_file as it ships (32 MiB buffers, two writers), then fsync

Usage: python bench/bench_write_strategies.py [--size-gb 4.3] [--repeats 3] [--workdir DIR] [--only a,b]
"""

import argparse
import ctypes
import mmap
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

libc = ctypes.CDLL(None, use_errno=True)
sfr = libc.sync_file_range
sfr.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
W, WB, WA = 2, 1, 4
CH = 32 << 20


def plain(src, dst, kick=None):
    with open(src, "rb") as f:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        size = os.fstat(f.fileno()).st_size
        off = 0
        while off < size:
            n = os.copy_file_range(f.fileno(), fd, min(CH, size - off))
            if kick: kick(fd, off, n)
            off += n
        return fd


def v_nosync(src, dst):
    os.close(plain(src, dst))

def v_fsync(src, dst):
    fd = plain(src, dst); os.fsync(fd); os.close(fd)

def v_inline(src, dst):
    fd = plain(src, dst, lambda fd, o, n: sfr(fd, o, n, W)); os.fdatasync(fd); os.close(fd)

def v_thread(src, dst):
    q = queue.Queue()
    def worker():
        while (item := q.get()) is not None:
            sfr(*item, W)
    t = threading.Thread(target=worker); t.start()
    fd = plain(src, dst, lambda fd, o, n: q.put((fd, o, n)))
    q.put(None); t.join(); os.fdatasync(fd); os.close(fd)

def v_behind(src, dst, lag=8):
    # start writeback of each chunk, and wait for chunk i-lag: dirty memory stays bounded
    pending = []
    def kick(fd, o, n):
        sfr(fd, o, n, W)
        pending.append((o, n))
        if len(pending) > lag:
            po, pn = pending.pop(0)
            sfr(fd, po, pn, WB | W | WA)
    fd = plain(src, dst, kick); os.fdatasync(fd); os.close(fd)

def v_behind_thread(src, dst, lag=8):
    q = queue.Queue(maxsize=lag)
    def worker():
        while (item := q.get()) is not None:
            sfr(*item, WB | W | WA)
    t = threading.Thread(target=worker); t.start()
    def kick(fd, o, n):
        sfr(fd, o, n, W); q.put((fd, o, n))
    fd = plain(src, dst, kick)
    q.put(None); t.join(); os.fdatasync(fd); os.close(fd)

def v_direct(src, dst, bs=16 << 20):
    # buffered reads into aligned buffers; O_DIRECT writes from another thread
    size = os.path.getsize(src)
    bufs = [mmap.mmap(-1, bs) for _ in range(3)]
    free, full = queue.Queue(), queue.Queue()
    for b in bufs: free.put(b)
    fdo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    def writer():
        off = 0
        while (item := full.get()) is not None:
            b, n = item
            m = memoryview(b)
            if n % 4096:
                pad = (n + 4095) // 4096 * 4096
                m[n:pad] = bytes(pad - n)
                os.pwrite(fdo, m[:pad], off); os.ftruncate(fdo, off + n)
            else:
                os.pwrite(fdo, m[:n], off)
            off += n
            free.put(b)
    t = threading.Thread(target=writer); t.start()
    fdi = os.open(src, os.O_RDONLY)
    off = 0
    while off < size:
        b = free.get()
        n = os.preadv(fdi, [b], off)
        full.put((b, n)); off += n
    full.put(None); t.join(); os.fdatasync(fdo); os.close(fdo); os.close(fdi)

def v_cp(src, dst):
    subprocess.run(["cp", src, dst], check=True)

def v_cpsync(src, dst):
    subprocess.run(["cp", src, dst], check=True); subprocess.run(["sync"], check=True)


def v_output_file(src, dst):
    from surgery import output_file
    from surgery.durable import fsync_path

    with output_file.create(Path(dst)) as out:
        out.copy_range(Path(src), 0, os.path.getsize(src))
    fsync_path(Path(dst))


STRATEGIES = ("cp", "cpsync", "nosync", "fsync", "inline", "thread", "behind", "behind_thread", "direct", "output_file")


def _generate(path: Path, size: int) -> None:
    import numpy as np

    block = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--only", default=",".join(STRATEGIES))
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="surgery-bench-") as tmp:
        src = Path(tmp) / "source.bin"
        _generate(src, int(args.size_gb * 1e9))
        with open(src, "rb") as f:  # warm
            while f.read(64 << 20):
                pass
        walls = {n: [] for n in names}
        for _ in range(args.repeats):
            for n in names:
                dst = Path(tmp) / ("out." + n)
                subprocess.run(["sync"], check=True)
                start = time.perf_counter()
                globals()["v_" + n](str(src), str(dst))
                walls[n].append(time.perf_counter() - start)
                os.unlink(dst)
        print(f"{args.size_gb} GB, medians of {args.repeats}\n")
        print("| strategy | median | every round |\n|---|---|---|")
        for n in names:
            print(f"| {n} | {statistics.median(walls[n]):.2f} s | {', '.join(f'{w:.2f}' for w in walls[n])} |")


if __name__ == "__main__":
    main()
