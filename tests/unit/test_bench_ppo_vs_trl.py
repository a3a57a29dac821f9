"""The comparison arithmetic of bench/ppo_vs_trl.py, worked by hand: where a curve's gain is read
at a KL, the common KL, and the seed-paired difference reported beside the rule."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ppo_vs_trl.py"
_spec = importlib.util.spec_from_file_location("ppo_vs_trl", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _curve(*points: tuple[float, float]) -> list[dict]:
    return [{"kl": kl, "score": score} for kl, score in points]


def test_gain_is_interpolated_at_the_first_crossing_and_counted_from_the_sft_point():
    curve = _curve((0.0, -1.0), (1.0, 1.0), (3.0, 2.0), (1.5, 3.0), (2.5, 4.0))
    # KL 2.0 is first crossed between (1.0, 1.0) and (3.0, 2.0): halfway, score 1.5, gain 2.5.
    # The later crossing between (1.5, 3.0) and (2.5, 4.0) is not the one read.
    assert bench.gain_at(curve, 2.0) == pytest.approx(2.5)
    assert bench.gain_at(curve, 0.5) == pytest.approx(1.0)  # score 0.0 - (-1.0)
    assert bench.gain_at(curve, 3.5) is None  # never reached


def _run(side: str, seed: int, curve: list[dict]) -> dict:
    return {"side": side, "seed": seed, "curve": curve, "update_seconds": [1.0, 1.0],
            "update_cpu_seconds": [2.0, 2.0], "load_average": 0.5}  # fmt: skip


def test_paired_difference_is_the_mean_over_seeds_and_its_standard_error():
    diff = bench.paired_difference([3.0, 2.0, 4.0], [2.0, 2.0, 2.0])
    # differences 1, 0, 2: mean 1, sample variance 1, SE sqrt(1 / 3)
    assert diff == pytest.approx({"mean": 1.0, "se": 3**-0.5, "seeds": 3})
    assert bench.paired_difference([1.0, None], [0.5, 0.2]) is None  # one pair only


def test_summary_pairs_runs_by_seed_whatever_order_they_come_in():
    ours = {0: _curve((0.0, 0.0), (2.0, 2.0)), 1: _curve((0.0, 0.0), (4.0, 2.0))}
    trl = {0: _curve((0.0, 0.0), (2.0, 1.0)), 1: _curve((0.0, 0.0), (2.0, 3.0))}
    runs = [_run("trl", 1, trl[1]), _run("ours", 0, ours[0]), _run("ours", 1, ours[1]),
            _run("trl", 0, trl[0])]  # fmt: skip
    summary = bench.summarize(runs)
    assert summary["common_kl"] == 2.0  # the smallest of the runs' largest KLs
    # at KL 2: ours 2.0 (seed 0) and 1.0 (seed 1); trl 1.0 and 3.0 -> differences +1, -2
    diff = summary["gain_difference_by_kl_fraction"]["1"]
    assert diff["mean"] == pytest.approx(-0.5)
    assert diff["se"] == pytest.approx((4.5 / 2) ** 0.5)
    assert summary["gain_ratio"] == pytest.approx(1.5 / 2.0)
    assert summary["target_gain_met"] is False
    assert "ours - trl -0.500" in bench.table(runs, summary)


def test_the_same_runs_are_also_read_with_the_sampled_kl():
    def curve(*points):  # (exact kl, sampled kl, score)
        return [{"kl": a, "kl_sampled": b, "score": c} for a, b, c in points]

    runs = [
        _run("ours", 0, curve((0.0, 0.0, 0.0), (1.0, 2.0, 1.0), (2.0, 2.0, 2.0))),
        _run("trl", 0, curve((0.0, 0.0, 0.0), (2.0, 1.0, 1.0), (2.0, 2.0, 3.0))),
        _run("ours", 1, curve((0.0, 0.0, 0.0), (2.0, 2.0, 2.0))),
        _run("trl", 1, curve((0.0, 0.0, 0.0), (2.0, 2.0, 2.0))),
    ]
    summary = bench.summarize(runs)
    # exact KL: ours seed 0 first reaches 2.0 at its third point (score 2), trl seed 0 at its
    # second (score 1); seed 1 gains 2 on both sides
    assert summary["common_kl"] == 2.0
    assert summary["gain_ratio"] == pytest.approx((2.0 + 2.0) / (1.0 + 2.0))
    # sampled KL: ours seed 0 reaches 2.0 at its second point (score 1), trl seed 0 at its third
    alt = summary["with_sampled_kl"]
    assert alt["common_kl"] == 2.0
    assert alt["gain_ratio"] == pytest.approx((1.0 + 2.0) / (3.0 + 2.0))
    assert alt["difference"]["mean"] == pytest.approx(-1.0)
    assert "read with the sampled (k1) KL instead: common KL 2.000, ratio 0.60" in bench.table(
        runs, summary
    )
    # curves without the sampled measure (runs before it was recorded) get no such line
    plain = [
        {**r, "curve": [{"kl": p["kl"], "score": p["score"]} for p in r["curve"]]} for r in runs
    ]
    assert "with_sampled_kl" not in bench.summarize(plain)


def test_summarize_pools_the_seeds_of_several_runs_and_refuses_a_seed_twice(tmp_path):
    def out(name: str, *runs: dict) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"runs": list(runs)}))
        return path

    first = out("a.json", _run("ours", 0, _curve((0.0, 0.0), (2.0, 2.0))),
                _run("trl", 0, _curve((0.0, 0.0), (2.0, 1.0))))  # fmt: skip
    second = out("b.json", _run("ours", 1, _curve((0.0, 0.0), (1.0, 1.0))),
                 _run("trl", 1, _curve((0.0, 0.0), (3.0, 3.0))))  # fmt: skip
    runs = bench.pooled_runs([first, second])
    assert sorted((r["side"], r["seed"]) for r in runs) == [
        ("ours", 0), ("ours", 1), ("trl", 0), ("trl", 1)
    ]  # fmt: skip
    summary = bench.summarize(runs)
    assert summary["common_kl"] == 1.0  # ours seed 1 reaches only 1.0: one common KL for all
    # at KL 1: ours 1.0 (seed 0: halfway to 2.0) and 1.0; trl 0.5 and 1.0
    assert summary["gain_ratio"] == pytest.approx(2.0 / 1.5)
    with pytest.raises(SystemExit, match="ours seed 0 is in two files"):
        bench.pooled_runs([first, first])
