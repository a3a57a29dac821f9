"""`alignflow run ARGS` that kills itself with SIGKILL at a named point, for
tests/flow/test_kill_every_stage.py: `python tests/flow/killed_run.py POINT ARGS...`.

POINT is `none`, `held:STAGE` (the stage's work is done; the run sleeps before committing it,
holding the artifacts root until killed), `committed:STAGE` (the stage's folder is committed; its MLflow run has not
ended), `logged` (the policy is logged to MLflow; no model version exists yet) or `versioned`
(the model version exists; its alias is not set). Killing mid-stage needs no help from here: the
test watches for the stage's `.partial` folder and kills the process group.
"""

from __future__ import annotations

import os
import signal
import sys


def _die(*_args, **_kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str) -> None:
    if point == "none":
        return
    if point.startswith(("held:", "committed:")):
        import time

        from alignflow.store import StageDir

        (when, _, stage), commit = point.partition(":"), StageDir.commit

        def commit_at_point(self, result):
            if self.final.parent.name == stage and when == "held":
                time.sleep(600)
            commit(self, result)
            if self.final.parent.name == stage:
                _die()

        StageDir.commit = commit_at_point
    elif point == "logged":
        import mlflow

        mlflow.register_model = _die
    elif point == "versioned":
        from mlflow import MlflowClient

        MlflowClient.set_registered_model_alias = _die
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    _arm(sys.argv[1])
    from alignflow.app.cli import main

    main(sys.argv[2:])
