"""Process set-up for the ``llmemf`` command: the memory allocator.

Why: a training step allocates and frees tensors of hundreds of MB (the (rows x items) logits of a
full softmax). glibc's malloc serves anything above its mmap threshold (at most 32 MB) with a fresh
mmap and returns it with munmap, so every step pays system calls and the page faults of touching
fresh pages: up to 40% of the process's CPU time in the kernel (issue 15). mimalloc with purging
off keeps freed pages mapped and reuses them. It ships as a wheel (cmeel-mimalloc, a dependency on
Linux x86-64), so every pip user has it; an allocator can only be chosen before the process starts,
so the command re-executes itself once with LD_PRELOAD set (benchmarks/bench_allocator.py measures
it against glibc with and without tunables; docs/cost.md has the numbers).

Environment:
  LLMEMF_ALLOCATOR=off       run as started (glibc, or whatever LD_PRELOAD the user set)
  LLMEMF_ALLOCATOR=glibc     glibc with GLIBC_TUNABLES below, no preload
  LLMEMF_ALLOCATOR=mimalloc  (default) mimalloc if the wheel is installed, else as started
  LLMEMF_ALLOCATOR_ACTIVE    set by the re-execution to the allocator chosen: it is never repeated
A user's own LD_PRELOAD or GLIBC_TUNABLES is always respected (no re-execution then).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

SWITCH = "LLMEMF_ALLOCATOR"
ACTIVE = "LLMEMF_ALLOCATOR_ACTIVE"
CHOICES = ("mimalloc", "glibc", "off")
# mimalloc: never return freed pages to the OS (purge_delay -1): a training loop reallocates the
# same sizes every step, so returning them only to fault them in again is the cost to avoid.
MIMALLOC_ENV = {"MIMALLOC_PURGE_DELAY": "-1"}
# glibc without a preload: no mmap for large blocks (they come from the heap and stay there), and
# no trimming of the heap's top below 4 GiB of free memory.
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"


def mimalloc_path() -> Path | None:
    """libmimalloc.so from the cmeel-mimalloc wheel in this interpreter's site-packages, if installed."""
    for key in ("purelib", "platlib"):
        for name in ("libmimalloc.so.3", "libmimalloc.so"):
            lib = Path(sysconfig.get_paths()[key]) / "cmeel.prefix" / "lib" / name
            if lib.is_file():
                return lib
    return None


def allocator_env(environ: Mapping[str, str], lib: Path | None) -> dict[str, str] | None:
    """The environment to re-execute with, or None to run as started. Pure: tested without exec."""
    if ACTIVE in environ or sys.platform != "linux":
        return None
    choice = environ.get(SWITCH, "mimalloc").strip().lower() or "mimalloc"
    if choice not in CHOICES:
        # Not a UserError: this runs before the CLI exists; an unknown value falls back to "off" loudly.
        print(f"warning: {SWITCH}={environ[SWITCH]!r} is not one of {', '.join(CHOICES)}; using 'off'", file=sys.stderr)
        return None
    if choice == "off" or environ.get("LD_PRELOAD") or environ.get("GLIBC_TUNABLES"):
        return None
    env = dict(environ)
    if choice == "mimalloc" and lib is not None:
        env["LD_PRELOAD"] = str(lib)
        for key, value in MIMALLOC_ENV.items():
            env.setdefault(key, value)
        env[ACTIVE] = "mimalloc"
    elif choice == "glibc":
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
        env[ACTIVE] = "glibc-tunables"
    else:  # mimalloc asked for but not installed (not Linux x86-64, or installed without dependencies)
        return None
    return env


def reexec_with_allocator(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Replace this process by itself under the chosen allocator (see the module docstring); returns
    only when nothing is to be done or exec failed. Call it before anything allocates much."""
    environ = os.environ if environ is None else environ
    env = allocator_env(environ, mimalloc_path())
    if env is None:
        return
    argv = list(sys.orig_argv if argv is None else argv)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
    except OSError as e:  # the command still works, only slower
        print(f"warning: could not restart under {env[ACTIVE]} ({e}); continuing with the default allocator", file=sys.stderr)
