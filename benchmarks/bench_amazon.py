"""`prepare amazon` on a generated 2018-format dump: review lines per second and peak resident memory.

    python benchmarks/bench_amazon.py /tmp/amz --lines 10000000 [--gzip] [--keep]

Generates (once; reused when present) FOOD: ``--lines`` review lines, KITCHEN: a tenth of that with the same
users, and a metadata file per domain, all in the 2018 format (JSON lines, ~450 bytes per review like
the real dump). Each stage runs in its own process so that its peak RSS is its own:

- baseline: the stdlib, ``json.loads`` on every line of the first ``--baseline-lines`` lines (the naive reader);
- read: ``amazon.read_reviews`` on the FOOD file (the streaming reader alone);
- prepare: ``llmemf prepare amazon`` on both domains with metadata (reading, the shared core, metadata, save).

Prints one table (lines/s and the ratio to the baseline measured in the same run) and the counts
``prepare amazon`` printed. Timings depend on the machine's load: say so when quoting them.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORDS = ("good tea strong flavour would buy again the box arrived broken but the taste is fine my kids love these snacks " * 8).split()
TEXT = " ".join(WORDS)


def generate(path: Path, n_lines: int, n_users: int, item_prefix: str, n_items: int, seed: int, gz: bool) -> None:
    """Users and items drawn from power laws, so that a 10-core survives as in the real dumps."""
    rng = np.random.default_rng(seed)
    user_w = 1.0 / np.arange(1, n_users + 1) ** 0.9
    item_w = 1.0 / np.arange(1, n_items + 1) ** 0.8
    user_w, item_w = user_w / user_w.sum(), item_w / item_w.sum()
    user_perm = np.random.default_rng(0).permutation(n_users)  # the same users in both domains
    with gzip.open(path, "wt", compresslevel=1) if gz else open(path, "w") as f:  # noqa: SIM115
        for start in range(0, n_lines, 500_000):
            n = min(500_000, n_lines - start)
            users = user_perm[rng.choice(n_users, size=n, p=user_w)]
            items = rng.choice(n_items, size=n, p=item_w)
            ts = rng.integers(1_300_000_000, 1_540_000_000, size=n)
            lens = rng.integers(50, 600, size=n)
            offs = rng.integers(0, len(TEXT) - 600, size=n)
            f.write(
                "".join(
                    f'{{"overall": 5.0, "verified": true, "reviewTime": "01 5, 2015", "reviewerID": "A{u:013d}", "asin": "{item_prefix}{i:09d}", '
                    f'"style": {{"Size:": " 12 oz"}}, "reviewerName": "Some Name", "reviewText": "{TEXT[o : o + k]}", '
                    f'"summary": "Five Stars", "unixReviewTime": {t}}}\n'
                    for u, i, t, k, o in zip(users.tolist(), items.tolist(), ts.tolist(), lens.tolist(), offs.tolist(), strict=True)
                )
            )


def generate_meta(path: Path, item_prefix: str, n_items: int) -> None:
    with open(path, "w") as f:
        for i in range(n_items):
            f.write(
                f'{{"asin": "{item_prefix}{i:09d}", "title": "Item {i} &amp; friends", "description": ["Good", "stuff"], '
                f'"imageURL": ["https://images/I/{i}._SS40_.jpg"], "imageURLHighRes": ["https://images/I/{i}.jpg"]}}\n'
            )


HWM = (
    "import atexit\n"
    "def _hwm():\n"
    "    status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
    "    print('VmHWM_kB', status['VmHWM'].split()[0], flush=True)\n"
    "atexit.register(_hwm)\n"
)


def run_stage(code: str) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds, peak RSS (MiB, the child's own VmHWM) and stdout of ``python -c code`` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", HWM + code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage failed:\n{out}")
    hwm = int(out.split("VmHWM_kB")[-1].split()[0]) / 1024
    return seconds, usage.ru_utime + usage.ru_stime, hwm, out.split("VmHWM_kB")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--lines", type=int, default=10_000_000, help="review lines of the FOOD file (KITCHEN gets a tenth)")
    ap.add_argument("--baseline-lines", type=int, default=1_000_000)
    ap.add_argument("--gzip", action="store_true", help="gzip the review files (level 1)")
    args = ap.parse_args()
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    suffix = ".json.gz" if args.gzip else ".json"
    food, kitchen = w / f"Food_{args.lines}{suffix}", w / f"Kitchen_{args.lines}{suffix}"
    n_users = max(1000, args.lines // 8)
    for path, n, prefix, n_items, seed in (
        (food, args.lines, "B", max(500, args.lines // 50), 1),
        (kitchen, args.lines // 10, "K", max(200, args.lines // 200), 2),
    ):
        if not path.exists():
            t0 = time.perf_counter()
            tmp = path.with_name(path.name + ".part")
            generate(tmp, n, n_users, prefix, n_items, seed, args.gzip)
            tmp.rename(path)
            print(f"generated {path} ({n} lines, {path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
        meta = w / f"meta_{prefix}_{n_items}.json"
        if not meta.exists():
            generate_meta(meta, prefix, n_items)
    meta_food, meta_kitchen = w / f"meta_B_{max(500, args.lines // 50)}.json", w / f"meta_K_{max(200, args.lines // 200)}.json"

    src = str(Path(__file__).resolve().parents[1] / "src")
    pre = f"import sys; sys.path.insert(0, {src!r}); "
    rows = []
    base_code = pre + (
        "import gzip, json, itertools\n"
        f"f = (gzip.open if {args.gzip} else open)({str(food)!r}, 'rb')  # noqa: SIM115\n"
        f"n = 0\nfor line in itertools.islice(f, {args.baseline_lines}):\n    r = json.loads(line); n += 1\nprint(n)"
    )
    s, cpu, rss, out = run_stage(base_code)
    base_rate = int(out.split()[-1]) / cpu
    rows.append(("baseline: json.loads per line", int(out.split()[-1]), s, cpu, rss))
    s, cpu, rss, out = run_stage(pre + f"from llmemf.data.amazon import read_reviews\nt, r = read_reviews({str(food)!r})\nprint(r.lines)")
    rows.append(("read_reviews (FOOD)", int(out.split()[-1]), s, cpu, rss))
    out_dir = w / "dataset"
    cli = (
        f"from llmemf.cli import app\nimport sys\nsys.argv = ['llmemf', 'prepare', 'amazon', {str(out_dir)!r}, "
        f"'--domain', 'Food={food}:{meta_food}', '--domain', 'Kitchen={kitchen}:{meta_kitchen}']\napp()"
    )
    s, cpu, rss, prepare_out = run_stage(pre + cli)
    total = args.lines + args.lines // 10
    rows.append(("prepare amazon (FOOD + KITCHEN + metadata)", total, s, cpu, rss))

    print(
        f"\n{'stage':45s} {'lines':>11s} {'wall s':>7s} {'lines/s':>9s} {'CPU s':>7s} {'lines/CPU-s':>11s} {'x baseline':>10s} {'peak RSS MiB':>12s}"
    )
    for name, n, sec, cpu, mem in rows:
        print(f"{name:45s} {n:11d} {sec:7.1f} {n / sec:9.0f} {cpu:7.1f} {n / cpu:11.0f} {n / cpu / base_rate:10.1f} {mem:12.0f}")
    load = os.getloadavg()
    print("\n(wall time includes interpreter start; CPU s = user + system of the stage's process, all threads; x baseline on CPU time;")
    print(f" {os.cpu_count()} CPUs shared with other jobs: load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end)\n")
    print(prepare_out)


if __name__ == "__main__":
    main()
