"""The host allocator's settings (fusec/allocator.py): applied once by both entry points."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from fusec import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_glibc_takes_every_setting_once():
    code = "from fusec import allocator; print(allocator.tune_host_allocator(), allocator.tune_host_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]


def test_mallopt_refusing_a_setting_is_reported(monkeypatch):
    class Libc:
        @staticmethod
        def mallopt(param, value):
            return 0 if param == allocator.M_TOP_PAD else 1
    fake = Libc.mallopt
    fake.argtypes = fake.restype = None
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Libc)
    assert allocator.tune_host_allocator() is False


def test_both_entry_points_tune_the_allocator(monkeypatch):
    import fusec.bench.cli as bench_cli
    import fusec.cli as cli

    called = []
    monkeypatch.setattr(cli, "tune_host_allocator", lambda: called.append("fusec"))
    monkeypatch.setattr(allocator, "tune_host_allocator", lambda: called.append("fusec.bench"))
    monkeypatch.setattr(sys, "argv", ["fusec", "--help"])
    cli.main()
    with pytest.raises(SystemExit):
        bench_cli.main(["--help"])
    assert called == ["fusec", "fusec.bench"]
