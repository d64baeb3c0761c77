"""The llmemf command's allocator re-execution (llmemf.runtime): decided once, switchable off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmemf import runtime

LIB = Path("/opt/lib/libmimalloc.so.3")  # any path: allocator_env only decides, never loads


def test_default_is_mimalloc_where_installed_else_the_system_malloc():
    assert runtime.choose({}, LIB) == "mimalloc"
    assert runtime.choose({}, None) == "off"
    # glibc's in-process tuning only when asked (its heap can grow without bound: runtime's docstring)
    assert runtime.choose({runtime.SWITCH: "glibc"}, LIB) == "glibc"


def test_mimalloc_preloaded_once():
    assert runtime.choose({runtime.SWITCH: "mimalloc"}, LIB) == "mimalloc"
    env = runtime.mimalloc_env({"PATH": "/bin"}, LIB)
    assert env["LD_PRELOAD"] == str(LIB)
    assert env[runtime.ACTIVE] == "mimalloc"
    assert env["MIMALLOC_PURGE_DELAY"] == "-1"
    assert env["PATH"] == "/bin"
    # The re-executed process sees the guard and does nothing more.
    assert runtime.choose(env, LIB) == "off"


def test_users_mimalloc_options_win():
    assert runtime.mimalloc_env({"MIMALLOC_PURGE_DELAY": "100"}, LIB)["MIMALLOC_PURGE_DELAY"] == "100"


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
def test_nothing_to_do(environ):
    assert runtime.choose(environ, LIB) == "off"


def test_mimalloc_without_the_wheel_runs_as_started():
    assert runtime.choose({runtime.SWITCH: "mimalloc"}, None) == "off"


def test_unknown_value_warns_and_runs_as_started(capsys):
    assert runtime.choose({runtime.SWITCH: "tcmalloc"}, LIB) == "off"
    assert "tcmalloc" in capsys.readouterr().err


PROBE = (
    "import os, sys; from llmemf import runtime; print('start', flush=True); print(runtime.setup_allocator(), flush=True); "
    "maps = open('/proc/self/maps').read(); "
    "print(os.environ.get('LLMEMF_ALLOCATOR_ACTIVE'), 'libmimalloc' in maps, sys.argv[1:])"
)


def _probe(**env_extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", runtime.SWITCH, runtime.ACTIVE)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE, "a", "b c"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.skipif(sys.platform != "linux", reason="allocator set-up is Linux only (LD_PRELOAD, glibc mallopt)")
def test_glibc_tuned_in_process_without_restart():
    # 'start' once: no re-execution; mallopt accepted (this is a glibc system).
    assert _probe(**{runtime.SWITCH: "glibc"}) == ["start", "glibc-mallopt", "None False ['a', 'b c']"]
    assert _probe(**{runtime.SWITCH: "off"}) == ["start", "off", "None False ['a', 'b c']"]


@pytest.mark.skipif(sys.platform != "linux", reason="cmeel-mimalloc is a dependency on Linux only")
def test_reexec_mimalloc_real_process_loads_it():
    # One restart: 'start' printed by the first and by the re-executed process, which decides nothing more.
    assert runtime.mimalloc_path() is not None, "cmeel-mimalloc (a dependency on Linux) is not installed"
    assert _probe() == ["start", "start", "mimalloc", "mimalloc True ['a', 'b c']"]
