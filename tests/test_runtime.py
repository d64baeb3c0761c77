"""The llmemf command's allocator re-execution (llmemf.runtime): decided once, switchable off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmemf import runtime

LIB = Path("/opt/lib/libmimalloc.so.3")  # any path: allocator_env only decides, never loads


def test_default_preloads_mimalloc_once():
    env = runtime.allocator_env({"PATH": "/bin"}, LIB)
    assert env["LD_PRELOAD"] == str(LIB)
    assert env[runtime.ACTIVE] == "mimalloc"
    assert env["MIMALLOC_PURGE_DELAY"] == "-1"
    assert env["PATH"] == "/bin"
    # The re-executed process sees the guard and does nothing more.
    assert runtime.allocator_env(env, LIB) is None


@pytest.mark.parametrize(
    "environ",
    [
        {runtime.SWITCH: "off"},
        {runtime.SWITCH: "OFF "},
        {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},  # the user's own choice wins
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"},
        {runtime.ACTIVE: "mimalloc"},
    ],
)
def test_no_reexec(environ):
    assert runtime.allocator_env(environ, LIB) is None


def test_mimalloc_missing_runs_as_started():
    assert runtime.allocator_env({}, None) is None


def test_glibc_tunables_need_no_library():
    env = runtime.allocator_env({runtime.SWITCH: "glibc"}, None)
    assert env["GLIBC_TUNABLES"] == runtime.GLIBC_TUNABLES
    assert "LD_PRELOAD" not in env
    assert env[runtime.ACTIVE] == "glibc-tunables"


def test_unknown_value_warns_and_runs_as_started(capsys):
    assert runtime.allocator_env({runtime.SWITCH: "tcmalloc"}, LIB) is None
    assert "tcmalloc" in capsys.readouterr().err


PROBE = (
    "import os, sys; from llmemf import runtime; print('start', flush=True); runtime.reexec_with_allocator(); "
    "maps = open('/proc/self/maps').read(); "
    "print(os.environ.get('LLMEMF_ALLOCATOR_ACTIVE'), 'libmimalloc' in maps, os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
)


def _probe(**env_extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", runtime.SWITCH, runtime.ACTIVE)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE, "a", "b c"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.skipif(sys.platform != "linux", reason="the re-execution is Linux only (LD_PRELOAD, GLIBC_TUNABLES)")
def test_reexec_glibc_tunables_real_process():
    lines = _probe(**{runtime.SWITCH: "glibc"})
    # One restart: 'start' printed by the first and by the re-executed process, then the result once.
    assert lines == ["start", "start", f"glibc-tunables False {runtime.GLIBC_TUNABLES} ['a', 'b c']"]


@pytest.mark.skipif(runtime.mimalloc_path() is None, reason="cmeel-mimalloc is not installed (pip install cmeel-mimalloc)")
def test_reexec_mimalloc_real_process_loads_it():
    assert _probe() == ["start", "start", "mimalloc True None ['a', 'b c']"]
    assert _probe(**{runtime.SWITCH: "off"}) == ["start", "None False None ['a', 'b c']"]
