"""One module per pipeline stage: `run_<stage>(cfg, ctx, *upstream) -> StageResult`, and at the
bottom its thin Prefect task. Heavy imports (torch, transformers, trl) stay inside functions."""
