"""Process set-up for the ``llmemf`` command: the memory allocator.

Why: a training step allocates and frees tensors of hundreds of MB (the (rows x items) logits of a
full softmax). glibc's malloc serves anything above its mmap threshold (at most 32 MB) with a fresh
mmap and returns it with munmap, so every step pays system calls and the page faults of touching
fresh pages: 40-50% of the process's CPU time in the kernel (issue 15). mimalloc with purging off
(the cmeel-mimalloc wheel, a dependency on Linux) keeps freed pages and reuses them: kernel share
a few percent, and the fastest steps measured (docs/cost.md). An allocator can only be chosen before
the process starts, so the command re-executes itself once with LD_PRELOAD set.

glibc told by mallopt to keep large blocks in its one heap (no mmap, no trimming, one arena) was the
default before: as fast in short benchmarks, but a full-softmax LLM-EMF training on Food-Kitchen grew
to 24 GB and was killed by the kernel within two epochs (steps of varying sizes fragment the heap,
and nothing is ever returned). It stays as an explicit choice for benchmarks, never the default.

Environment:
  LLMEMF_ALLOCATOR=mimalloc  (default) re-execute under mimalloc if the wheel is installed, else run as started
  LLMEMF_ALLOCATOR=glibc     glibc tuned in-process by mallopt (see above: memory can grow without bound)
  LLMEMF_ALLOCATOR=off       run as started (plain glibc, or whatever LD_PRELOAD the user set)
  LLMEMF_ALLOCATOR_ACTIVE    set by the re-execution under mimalloc: present = decided already
A user's own LD_PRELOAD or GLIBC_TUNABLES is always respected (nothing is changed then).
"""

from __future__ import annotations

import ctypes
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
# glibc (opt-in): no mmap for large blocks (they come from the heap and stay there), no
# trimming of the heap's top below 2 GiB of free memory, and one arena for all threads: a thread's
# own arena is a heap of at most 64 MB, so its large blocks would still be mmapped
# (benchmarks/bench_allocator.py --probe). GLIBC_TUNABLES is the same for a process started elsewhere.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # mallopt parameters, glibc's malloc.h
GLIBC_SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1, M_ARENA_MAX: 1}  # mallopt takes an int: 2 GiB
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.arena_max=1"


def mimalloc_path() -> Path | None:
    """libmimalloc.so from the cmeel-mimalloc wheel in this interpreter's site-packages, if installed."""
    for key in ("purelib", "platlib"):
        for name in ("libmimalloc.so.3", "libmimalloc.so"):
            lib = Path(sysconfig.get_paths()[key]) / "cmeel.prefix" / "lib" / name
            if lib.is_file():
                return lib
    return None


def choose(environ: Mapping[str, str], lib: Path | None) -> str:
    """What to do in this process: "mimalloc" (re-execute under it; the default, where the wheel is
    installed), "glibc" (tune in-process; only when asked) or "off". Pure: tested without exec."""
    if ACTIVE in environ or sys.platform != "linux":
        return "off"
    choice = environ.get(SWITCH, "mimalloc").strip().lower() or "mimalloc"
    if choice not in CHOICES:
        # Not a UserError: this runs before the CLI exists; an unknown value leaves the process as it is, loudly.
        print(f"warning: {SWITCH}={environ[SWITCH]!r} is not one of {', '.join(CHOICES)}; using 'off'", file=sys.stderr)
        return "off"
    if choice == "off" or environ.get("LD_PRELOAD") or environ.get("GLIBC_TUNABLES"):
        return "off"
    if choice == "mimalloc":
        return "mimalloc" if lib is not None else "off"
    return choice


def mimalloc_env(environ: Mapping[str, str], lib: Path) -> dict[str, str]:
    """The environment to re-execute with under mimalloc (the user's own MIMALLOC_* options win)."""
    env = dict(environ)
    env["LD_PRELOAD"] = str(lib)
    for key, value in MIMALLOC_ENV.items():
        env.setdefault(key, value)
    env[ACTIVE] = "mimalloc"
    return env


def tune_glibc_malloc() -> bool:
    """Apply GLIBC_SETTINGS to this process's glibc malloc (mallopt); False where that is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(key, value) == 1 for key, value in GLIBC_SETTINGS.items())


def setup_allocator(argv: Sequence[str] | None = None) -> str:
    """Choose the allocator for this process (see the module docstring): re-executes under mimalloc
    (never returns then), or tunes glibc in-process. Returns what was done. Call it first thing."""
    if os.environ.get(ACTIVE):  # the re-executed process: report what its parent chose
        return os.environ[ACTIVE]
    what = choose(os.environ, mimalloc_path())
    if what == "mimalloc":
        env = mimalloc_env(os.environ, mimalloc_path())
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, list(sys.orig_argv if argv is None else argv), env)
        except OSError as e:  # the command still works, only slower
            print(f"warning: could not restart under mimalloc ({e}); running with the system's malloc", file=sys.stderr)
            what = "off"
    if what == "glibc":
        # Not recorded in ACTIVE: a mallopt setting is not inherited, so a child process decides for itself.
        what = "glibc-mallopt" if tune_glibc_malloc() else "off"
    return what
