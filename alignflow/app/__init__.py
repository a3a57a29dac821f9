"""The application layer: the `alignflow` command (cli) and Prefect deployments (deploy). It is
the only part of the package that imports Prefect, `flows` or `tasks`; the library beside it
(everything else under alignflow/) never does (tests/unit/test_layers.py)."""
