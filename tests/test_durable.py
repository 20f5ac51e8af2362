"""Writeback requests during a write: the closing fsync is left with the tail only."""

from __future__ import annotations

import os

from surgery import durable
from surgery.durable import Writeback


def test_writeback_requests_each_32_mb_range_once_in_order(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(durable, "_sync_file_range", lambda fd, offset, length, flags: calls.append((offset, length, flags)) or 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"h" * 100)  # a header before the tensors: requests start after it
        writeback = Writeback(fd)
        step = writeback.progress(None)
        for _ in range(5):
            step(16 << 20)
    finally:
        os.close(fd)
    assert calls == [(100, 32 << 20, 2), (100 + (32 << 20), 32 << 20, 2)]  # the last 16 MB are left to fsync


def test_writeback_stops_asking_after_a_refusal_and_still_reports_progress(tmp_path, monkeypatch):
    calls, reported = [], []
    monkeypatch.setattr(durable, "_sync_file_range", lambda *args: calls.append(args) or -1)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        step = Writeback(fd).progress(reported.append)
        for _ in range(6):
            step(32 << 20)
    finally:
        os.close(fd)
    assert len(calls) == 1 and reported == [32 << 20] * 6


def test_sync_file_range_is_found_on_linux():
    assert durable._sync_file_range is not None or not os.uname().sysname == "Linux"
