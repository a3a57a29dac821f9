"""alignflow.distributed across two real gloo processes under torchrun (~10 s)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from alignflow import distributed

    assert distributed.init_process_group_from_env()
    rank = distributed.rank()
    shared = distributed.broadcast_object({"work": "from rank 0"} if rank == 0 else None)
    mean = distributed.all_reduce_mean(torch.tensor([float(rank), 10.0 * rank]))
    distributed.barrier()
    report = {"rank": rank, "world": distributed.world_size(), "main": distributed.is_main(),
              "shared": shared, "mean": mean.tolist(), "device": str(distributed.device())}
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as out:
        json.dump(report, out)
    """
)


def test_two_processes_agree_on_rank_zeros_object_and_the_mean(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"], r["main"]) for r in reports] == [(0, 2, True), (1, 2, False)]
    assert all(r["shared"] == {"work": "from rank 0"} for r in reports)
    assert all(r["mean"] == [0.5, 5.0] for r in reports)
    assert all(r["device"] == "cpu" for r in reports)
