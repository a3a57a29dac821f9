"""alignflow: the RLHF loop as Prefect flows tracked in MLflow."""

__version__ = "0.1.0"
