"""Our PPO engine: pure tensor math (functional), sampling (rollout), the loop (trainer)."""
