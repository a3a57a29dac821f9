"""What happens when nobody answers a pause for labels: `on_timeout: fail` fails the stage with a
line naming the setting; `continue` goes on with what was labelled. A real (ephemeral) Prefect
flow run pauses and times out; nothing resumes it."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from alignflow.config import HumanLabelConfig
from alignflow.feedback.labelers import LabelError
from alignflow.feedback.records import Comparison
from tasks.label import label_by_people

COMPARISONS = [
    Comparison.of([{"role": "user", "content": f"Review kettle {n}."}], ["Great!", "Bad."])
    for n in range(3)
]


@flow
def _label(human: HumanLabelConfig):
    return label_by_people(COMPARISONS, human, "human", seed=0)


# slow (30-70 s): the family matrix (tests/flow/test_families.py) took its place in make test's
# 20 minutes; it runs under make test-all
@pytest.mark.slow
def test_an_unanswered_pause_fails_or_continues_as_configured():
    with prefect_test_harness():
        records, counts = _label(HumanLabelConfig(timeout_s=2, on_timeout="continue"))
        assert records == [] and counts["unlabelled"] == 3

        with pytest.raises(LabelError, match=r"comparisons 1-3 were not labelled within 2 s"):
            _label(HumanLabelConfig(timeout_s=2, on_timeout="fail"))

        # suspending frees a worker and needs one to start the run again: a deployment's run
        with pytest.raises(LabelError, match="human.wait: suspend .* needs a deployment"):
            _label(HumanLabelConfig(wait="suspend"))


def test_people_cannot_label_outside_a_flow_run():
    with pytest.raises(LabelError, match="pauses the pipeline's flow run"):
        label_by_people(COMPARISONS, HumanLabelConfig(), "human", seed=0)
