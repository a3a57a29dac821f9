"""Which prompts each PPO update rolls out (alignflow.rl.trainer.prompt_indices)."""

from __future__ import annotations

from alignflow.rl.trainer import prompt_indices


def _epochs(n: int, size: int, seed: int, updates: int) -> list[list[int]]:
    flat = [i for u in range(updates) for i in prompt_indices(n, size, seed, u)]
    return [flat[start : start + n] for start in range(0, len(flat) - n + 1, n)]


def test_every_prompt_is_seen_once_per_epoch_even_when_batches_cross_epochs():
    # 10 prompts, batches of 4: update 2 takes places 8..11, the end of epoch 0 and the start of 1
    for epoch in _epochs(n=10, size=4, seed=3, updates=5):  # 20 places, 2 whole epochs
        assert sorted(epoch) == list(range(10))


def test_order_is_reproducible_and_reshuffled_each_epoch():
    assert prompt_indices(16, 8, 5, 3) == prompt_indices(16, 8, 5, 3)
    first, second = _epochs(n=16, size=8, seed=5, updates=4)
    assert first != second


def test_neighbouring_seeds_do_not_replay_each_others_epochs():
    """Seeding the permutation with seed + epoch made seed s's epoch e+1 equal seed s+1's epoch e,
    so runs meant to be independent saw the same batches shifted by an epoch."""
    seed0 = _epochs(n=32, size=8, seed=0, updates=12)
    seed1 = _epochs(n=32, size=8, seed=1, updates=12)
    assert all(a != b for a in seed0 for b in seed1)
