"""A run's pictures (alignflow.charts PNGs) as Prefect image artifacts, shown on the flow run's
Artifacts tab. The PNG travels inside the artifact as a data URL: the Prefect UI shows it without
reaching the MLflow store (which the embedded default serves to nobody)."""

from __future__ import annotations

import base64
from pathlib import Path

from prefect.artifacts import create_image_artifact

# A picture larger than this stays in MLflow only (the Prefect database keeps every artifact).
MAX_BYTES = 2_000_000


def chart_artifact(path: Path, key: str, description: str) -> None:
    """The PNG at `path` as the image artifact `key`; nothing when the stage drew none."""
    if not path.is_file() or path.stat().st_size > MAX_BYTES:
        return
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    create_image_artifact(
        image_url=f"data:image/png;base64,{data}", key=key, description=description
    )
