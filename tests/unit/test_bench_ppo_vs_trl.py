"""The comparison arithmetic of bench/ppo_vs_trl.py, worked by hand: where a curve's gain is read
at a KL, the common KL, the seed-paired difference reported beside the rule, the FLOPs of each
phase and their fraction of the matmul peak; and the LoRA models both sides get, on a tiny Llama."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ppo_vs_trl.py"
_spec = importlib.util.spec_from_file_location("ppo_vs_trl", BENCH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["ppo_vs_trl"] = bench  # dataclasses look their module up while the class is built
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


# ---- FLOPs, phases and the matmul peak ----------------------------------------------------------

POLICY = bench.Matmuls(
    layers=100, adapters=10, head=50, backward=40, trained=10, head_trained=False
)
CRITIC = bench.Matmuls(layers=20, adapters=2, head=1, backward=8, trained=2, head_trained=True)
REWARD = bench.Matmuls(layers=20, adapters=0, head=1, backward=0, trained=0, head_trained=False)


def test_one_side_per_file_pools_into_the_table_of_both_sides_in_one(tmp_path):
    # `--sides ours` and `--sides trl` runs: each file holds one side; pooled, the same table
    runs = [
        _run("ours", 0, _curve((0.0, 0.0), (2.0, 2.0))),
        _run("trl", 0, _curve((0.0, 0.0), (2.0, 1.0))),
        _run("ours", 1, _curve((0.0, 0.0), (1.0, 1.0))),
        _run("trl", 1, _curve((0.0, 0.0), (3.0, 3.0))),
    ]
    for side in bench.SIDES:
        mine = [r for r in runs if r["side"] == side]
        (tmp_path / f"{side}.json").write_text(json.dumps({"runs": mine}))
    pooled = bench.pooled_runs([tmp_path / "ours.json", tmp_path / "trl.json"])
    assert bench.summarize(pooled) == bench.summarize(runs)
    table = bench.table(pooled, bench.summarize(pooled)).splitlines()
    assert sorted(table) == sorted(bench.table(runs, bench.summarize(runs)).splitlines())
    # a one-side run prints its rows before any common KL is known
    assert bench.run_line(runs[0], None).split()[-1] == "n/a"
    assert bench.run_line(runs[0], 1.0).split()[-1] == "+1.000"


def test_a_forward_pass_costs_two_flops_per_weight_and_position():
    assert bench.forward_flops(POLICY, tokens=3, head_tokens=2) == 2 * (100 * 3 + 50 * 2)
    # the reference: the same model with its 10 adapter weights switched off
    assert bench.forward_flops(POLICY, 3, 2, adapters=False) == 2 * (90 * 3 + 50 * 2)


def test_a_training_step_adds_the_backward_through_the_trained_layers_and_the_head():
    # forward 800; input gradients through 40 layer weights and the head, 10 weight gradients
    assert bench.train_flops(POLICY, tokens=3, head_tokens=2) == 800 + 2 * 50 * 3 + 2 * 50 * 2
    # a trained head also gets its weight gradient: forward 2 * 21 * 7, backward 2 * 10 * 7 + 4 * 7
    assert bench.train_flops(CRITIC, 7, 7) == 294 + 140 + 28


def test_a_full_model_trains_at_six_flops_per_weight_and_token():
    full = bench.Matmuls(layers=1000, adapters=0, head=0, backward=1000, trained=1000,
                         head_trained=True)  # fmt: skip
    assert bench.train_flops(full, tokens=5, head_tokens=5) == 6 * 1000 * 5


def test_update_flops_of_one_rollout_worked_by_hand():
    models = {"policy": POLICY, "critic": CRITIC, "reward": REWARD}
    calls = [(2, 4, 3)]  # 2 rows, prompt width 4, response width 3: 7 positions
    # generation: 6 positions through the layers (the last token is never fed back), 3 heads
    generation = 2 * 2 * (100 * 6 + 50 * 3)
    # TRL: LM head on all 7 positions; reference 1960, critic 294, reward 294; per epoch policy
    # step 2100 + 700 + 700 and critic step 462
    trl = bench.update_flops("trl", models, calls, ppo_epochs=2)
    assert trl == {"generation_flops": generation,
                   "training_flops": 2 * (1960 + 294 + 294 + 2 * (3500 + 462))}  # fmt: skip
    # ours: LM head on the 4 positions predicting the response; the policy's own forward too
    # (reference 1660, policy 1800); policy step 1800 + 700 + 400
    ours = bench.update_flops("ours", models, calls, ppo_epochs=2)
    assert ours == {"generation_flops": generation,
                    "training_flops": 2 * (1660 + 1800 + 294 + 294 + 2 * (2900 + 462))}  # fmt: skip
    # with a shared trunk of 12 weights per token, recorded while sampling (the last token, never
    # fed back, through the trunk: 2 x 12 per row), every later pass skips it: 2 x 12 x 7 = 168
    ours = bench.update_flops("ours", models, calls, ppo_epochs=2, trunk=12)
    assert ours == {"generation_flops": generation + 2 * 2 * 12, "training_flops": 2 * (
        1660 + 1800 + 294 + 294 - 4 * 168 + 2 * (2900 + 462 - 2 * 168))}  # fmt: skip


def _phased_run(side: str, seed: int, generation_seconds: tuple[float, float, float]) -> dict:
    run = _run(side, seed, _curve((0.0, 0.0), (1.0, 1.0)))
    phase = {"generation_flops": 4e9, "training_flops": 12e9}
    return run | {
        "update_seconds": [10.0, 4.0, 6.0],
        "phases": [phase | {"generation_seconds": s} for s in generation_seconds],
        "peak_flops_per_second": 10e9,
    }


def test_phase_rates_skip_the_warm_up_update_and_divide_by_the_peak():
    rates = bench.phase_rates(_phased_run("ours", 0, (9.0, 1.0, 3.0)))
    # updates 2 and 3: generation 4 s of 10 s, 8 GFLOP; training 6 s, 24 GFLOP; peak 10 GFLOP/s
    assert rates["generation"] == pytest.approx(
        {"seconds": 2.0, "flops": 4e9, "flops_per_second": 2e9, "peak_fraction": 0.2}
    )
    assert rates["training"] == pytest.approx(
        {"seconds": 3.0, "flops": 12e9, "flops_per_second": 4e9, "peak_fraction": 0.4}
    )
    assert rates["update"]["peak_fraction"] == pytest.approx(32e9 / 10.0 / 10e9)
    assert bench.phase_rates(_run("ours", 0, [])) is None  # recorded before phases were


def test_summary_averages_the_phase_rates_over_seeds_and_prints_them():
    seconds = {("ours", 1): (9.0, 3.0, 3.0)}  # the others spend (9, 1, 3) s generating
    runs = [
        _phased_run(side, seed, seconds.get((side, seed), (9.0, 1.0, 3.0)))
        for side in ("ours", "trl")
        for seed in (0, 1)
    ]
    summary = bench.summarize(runs)
    # ours seed 1: generation 6 s for 8 GFLOP, 1.33 GFLOP/s; mean with seed 0's 2 GFLOP/s
    generation = summary["phases"]["ours"]["generation"]
    assert generation["flops_per_second"] == pytest.approx((2e9 + 8e9 / 6) / 2)
    assert summary["phases"]["trl"]["training"]["peak_fraction"] == pytest.approx(0.4)
    assert summary["peak_flops_per_second"] == [10e9]
    text = bench.table(runs, summary)
    assert "matmul peak measured: 10.0 GFLOP/s" in text
    assert "training    trl      3.000         12.00     4.00    40.0%" in text
    without = [_run("ours", 0, _curve((0.0, 0.0), (1.0, 1.0))), runs[2]]
    assert "phases" not in bench.summarize(without)  # one run without: no phase table


def test_matmul_peak_is_the_best_shape_rate(monkeypatch):
    assert bench.matmul_flops(2, 3, 4) == 48
    monkeypatch.setattr(bench, "PEAK_SHAPES", ((8, 8, 8), (4, 8, 16)))
    peak = bench.measure_matmul_peak("cpu", repeat=2, seconds=0.001)
    assert set(peak["by_shape"]) == {"8x8x8", "4x8x16"}
    assert peak["flops_per_second"] == max(peak["by_shape"].values()) > 0


# ---- the LoRA models of both sides, on a tiny Llama ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory) -> dict:
    """A 2-layer Llama (hidden 16, MLP 32) as SFT model and as reward model, saved."""
    from transformers import LlamaForSequenceClassification

    from alignflow.config import TinyModelConfig
    from alignflow.models import build_tiny_model, train_tokenizer

    root = tmp_path_factory.mktemp("models")
    tokenizer = train_tokenizer(["Hello there, how are you?", "I am fine, thanks."] * 4, 300)
    spec = TinyModelConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    policy = build_tiny_model(spec, tokenizer, seed=0)
    policy.save_pretrained(root / "sft")
    tokenizer.save_pretrained(root / "sft")
    policy.config.num_labels = 1
    LlamaForSequenceClassification(policy.config).save_pretrained(root / "reward")
    return {"sft": str(root / "sft"), "reward": str(root / "reward")}


def _lora_ppo():
    from alignflow.config import LoraConfig, PPOConfig

    return PPOConfig(lora=LoraConfig(r=2, alpha=4, top_layers=1))


def test_matmul_weights_of_a_tiny_llama_with_lora_on_its_top_layer(tiny_paths, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = bench._load(tiny_paths, _lora_ppo(), "ours", "cpu", seed=0)
    vocab = models.policy.config.vocab_size
    # a layer: q, k, v, o 16 x 16 and gate, up, down 16 x 32: 2560; the top layer's adapters at
    # r 2: 4 x 2 x (16 + 16) + 3 x 2 x (16 + 32) = 544; backward through the top layer only
    assert bench.matmul_weights(models.policy) == bench.Matmuls(
        layers=2 * 2560 + 544, adapters=544, head=vocab * 16, backward=2560 + 544, trained=544,
        head_trained=False,
    )  # fmt: skip
    critic = bench.Matmuls(5664, 544, head=16, backward=3104, trained=544, head_trained=True)
    assert bench.matmul_weights(models.value) == critic  # score 16 x 1 trains, counted once
    # a plain model: every weight counts as trained (the reward model only runs forward)
    assert bench.matmul_weights(models.reward_model) == bench.Matmuls(
        5120, 0, head=16, backward=5120, trained=5120, head_trained=True
    )
    # the trunk below the adapted layer: one plain layer
    assert (bench.trunk_weights(models.policy, 1), bench.trunk_weights(models.policy, 0)) == (
        2560,
        0,
    )


def test_trl_critic_trains_the_same_tensors_from_the_same_values_as_ours(tiny_paths, monkeypatch):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ppo = _lora_ppo()
    ours = bench._load(tiny_paths, ppo, "ours", "cpu", seed=3)
    trl = bench._load(tiny_paths, ppo, "trl", "cpu", seed=3)

    def trained(model) -> dict:
        return {
            name.removeprefix("base_model.model.").replace("modules_to_save.default.", ""): p
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    ours_critic, trl_critic = trained(ours.value), trained(trl.value)
    assert "score.weight" in trl_critic and len(trl_critic) == 1 + 2 * 7  # A and B on 7 linears
    assert ours_critic.keys() == trl_critic.keys()
    assert all(torch.equal(ours_critic[name], trl_critic[name]) for name in ours_critic)
    # TRL reads the critic's backbone and score head off the model itself
    assert type(getattr(trl.value, trl.value.base_model_prefix)).__name__ == "LlamaModel"
    assert bench.matmul_weights(ours.value) == bench.matmul_weights(trl.value)


def test_trl_gets_an_optimizer_over_exactly_the_weights_it_trains(
    tiny_paths, monkeypatch, tmp_path
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = bench._load(tiny_paths, _lora_ppo(), "trl", "cpu", seed=0)
    optimizer, _ = bench._our_optimizer(_lora_ppo(), models, tmp_path)
    held = [id(p) for group in optimizer.param_groups for p in group["params"]]
    trains = [
        id(p) for m in (models.policy, models.value) for p in m.parameters() if p.requires_grad
    ]
    assert sorted(held) == sorted(trains)
    assert len(trains) == 2 * 2 * 7 + 1  # policy and critic adapters, the critic's score head


def test_quantized_ppo_is_refused_and_lora_is_not():
    from alignflow.config import load_config

    cfg = load_config(str(Path(__file__).resolve().parents[2] / "configs" / "smollm2.yaml"))
    bench.check_comparable(cfg)  # LoRA on the top 8 layers: compared
    ppo = cfg.policy.ppo.model_copy(update={"quantization": "4bit"})
    quantized = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"ppo": ppo})})
    with pytest.raises(SystemExit, match="policy.ppo.quantization '4bit'"):
        bench.check_comparable(quantized)
