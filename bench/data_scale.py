"""Data preparation at scale: normalize, deduplicate (exact + MinHash near) and split generated
alpaca files of 100k and 1M rows; print time per row and peak RSS for each.

    .venv/bin/python bench/data_scale.py                 # 100k and 1M rows (~10 minutes on 2 cores)
    .venv/bin/python bench/data_scale.py --sizes 20000 200000

Each size runs in its own process so its peak RSS (VmHWM) is its own. The smallest size is the
baseline: the last column is time per row relative to it (1.0 = perfectly linear).

The generated rows are sentences over a 5,000-word vocabulary; 2 % are exact copies of an earlier
row and 2 % near copies (one word changed), so both dedup passes have work to do.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

EXACT_COPIES, NEAR_COPIES = 0.02, 0.02
VOCAB = [f"w{i}" for i in range(5000)]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    recent: list[dict] = []
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            draw = rng.random()
            if recent and draw < EXACT_COPIES:
                record = rng.choice(recent)
            elif recent and draw < EXACT_COPIES + NEAR_COPIES:
                record = dict(rng.choice(recent))
                words = record["output"].split()
                words[rng.randrange(len(words))] = rng.choice(VOCAB)
                record["output"] = " ".join(words)
            else:
                record = {
                    "instruction": " ".join(rng.choices(VOCAB, k=rng.randint(6, 16))),
                    "input": "" if rng.random() < 0.7 else " ".join(rng.choices(VOCAB, k=8)),
                    "output": " ".join(rng.choices(VOCAB, k=rng.randint(30, 60))),
                }
                recent = (recent + [record])[-1000:]
            handle.write(json.dumps(record) + "\n")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(path: Path, out: Path) -> None:
    """Prepare one file as the pipeline does (streaming) and print what it measured as JSON."""
    from alignflow.config import CleanConfig, DataConfig, DatasetConfig
    from alignflow.data.prepare import prepare_role

    out.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig(eval_fraction=0.05, clean=CleanConfig(eval_overlap_ngram=None))
    started = time.perf_counter()
    report = prepare_role("sft", [DatasetConfig(path=str(path))], out, cfg, eval_rows=[])
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "rows_in": report.rows_in,
                "removed": {k: v for k, v in report.removed.items() if v},
                "train": report.train,
                "eval": report.eval,
                "seconds": seconds,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/alignflow-bench-data"))
    parser.add_argument("--child", nargs=2, metavar=("FILE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sorted(args.sizes):
        path = args.workdir / f"alpaca_{size}.jsonl"
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            generate(path, size)
        run = subprocess.run(
            [sys.executable, __file__, "--child", str(path), str(args.workdir / f"out_{size}")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(run.stdout.strip().splitlines()[-1])
        results.append((size, result))
        print(f"{size} rows: {json.dumps(result)}", flush=True)
    base = results[0][1]["seconds"] / results[0][0]
    print(
        f"\n{'rows':>10} {'seconds':>9} {'us/row':>8} {'peak RSS MiB':>13} {'us/row vs base':>15}"
    )
    for size, result in results:
        per_row = result["seconds"] / size
        print(
            f"{size:>10} {result['seconds']:>9.1f} {per_row * 1e6:>8.1f} "
            f"{result['peak_rss_mib']:>13.0f} {per_row / base:>15.2f}"
        )


if __name__ == "__main__":
    main()
