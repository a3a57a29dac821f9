"""People in the loop: the flow pauses with a form per batch of comparisons and resumes with the
answers, given in the Prefect UI, with `alignflow label RUN_ID` in a terminal, or over Prefect's
REST API (`POST /flow_runs/{id}/resume` with `run_input`). Prefect validates an answer against
the form's schema before resuming; an invalid one leaves the run paused.

Lives in tasks/ because pausing is Prefect's (alignflow/ never imports Prefect).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from alignflow.config import HumanLabelConfig
from alignflow.feedback.forms import (
    NAME_FIELD,
    answer_model,
    describe,
    records_from_answer,
    shown_orders,
)
from alignflow.feedback.labelers import LabelError
from alignflow.feedback.records import Comparison, PreferenceRecord


def _suspender(flow_run_id):
    """`suspend_flow_run` for use inside a task (Prefect suspends only from the flow body unless
    it is given the run's id): returns the answer when this batch was answered before this run
    started again; otherwise suspends the run and leaves the process."""
    from prefect import get_client
    from prefect.exceptions import Pause
    from prefect.flow_runs import suspend_flow_run

    def wait(wait_for_input, timeout: int, key: str):
        answer = suspend_flow_run(
            wait_for_input=wait_for_input, flow_run_id=flow_run_id, timeout=timeout, key=key
        )
        if answer is None:  # suspended now: the answer schedules the run again, from the start
            with get_client(sync_client=True) as client:
                raise Pause(state=client.read_flow_run(flow_run_id).state)
        return answer

    return wait


def label_by_people(
    comparisons: Sequence[Comparison], human: HumanLabelConfig, labeler: str, seed: int
) -> tuple[list[PreferenceRecord], Counter]:
    """Pause once per `human.batch_size` comparisons and turn each answer into records.

    A pause that times out fails the stage (`on_timeout: fail`) or ends labelling with what was
    answered so far (`continue`; the rest are counted as `unlabelled`).
    """
    from prefect import get_run_logger
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.input import RunInput

    context = FlowRunContext.get()
    if context is None:
        raise LabelError(
            "collect: a 'human' labeler pauses the pipeline's flow run for answers; run it with "
            "`alignflow run CONFIG` (not a stage on its own)"
        )
    if human.wait == "suspend" and context.flow_run.deployment_id is None:
        raise LabelError(
            "collect: human.wait: suspend frees the worker while people label, which needs a "
            "deployment (alignflow deploy, then prefect deployment run); use wait: pause here"
        )
    wait = pause_flow_run if human.wait == "pause" else _suspender(context.flow_run.id)
    records: list[PreferenceRecord] = []
    counts: Counter = Counter()
    for start in range(0, len(comparisons), human.batch_size):
        batch = comparisons[start : start + human.batch_size]
        orders = shown_orders(batch, seed)
        form = answer_model(batch, human.mode, base=RunInput).with_initial_data(
            description=describe(batch, orders, len(comparisons) - start)
        )
        get_run_logger().info(
            "waiting for labels of comparisons %d-%d of %d: answer in the Prefect UI (this flow "
            "run's page), or in a terminal with `alignflow label %s`",
            start + 1, start + len(batch), len(comparisons), context.flow_run.id,
        )  # fmt: skip
        try:
            # The key names the batch: a suspended run, started again, finds the answers given.
            answer = wait(wait_for_input=form, timeout=human.timeout_s, key=f"{labeler}-{start}")
        except FlowPauseTimeout:
            if human.on_timeout == "fail":
                raise LabelError(
                    f"collect: comparisons {start + 1}-{start + len(batch)} were not labelled "
                    f"within {human.timeout_s} s (human.timeout_s; on_timeout: continue keeps "
                    "what was labelled)"
                ) from None
            counts["unlabelled"] += len(comparisons) - start
            break
        values = answer.model_dump()
        who = f"human:{values.get(NAME_FIELD) or 'anonymous'}"
        records += records_from_answer(batch, orders, values, human.mode, who)
        counts["labelled"] += len(batch)
    return records, counts


def paused_form(flow_run_id: str) -> tuple[dict, str]:
    """The JSON schema and markdown of the form a paused flow run waits on. Raises LabelError
    when the run is not paused for input."""
    from uuid import UUID

    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        keyset = run.state.state_details.run_input_keyset if run.state else None
        if not run.state or not run.state.is_paused() or not keyset:
            state = run.state.name if run.state else "no state"
            raise LabelError(f"flow run {flow_run_id} is not waiting for labels ({state})")
        schema = client.read_flow_run_input(run.id, keyset["schema"])
        description = client.read_flow_run_input(run.id, keyset["description"])
    # both are stored as JSON values: the description is a JSON string of the markdown
    return json.loads(schema), _markdown(description)


def _markdown(stored: str) -> str:
    """The form's description as text for a terminal (a JSON string decoded, not its escapes)."""
    try:
        decoded = json.loads(stored)
    except json.JSONDecodeError:
        return stored
    return decoded if isinstance(decoded, str) else stored


def _ask_field(name: str, spec: dict, required: bool, ask, echo) -> object:
    """Ask until the answer fits the field's schema; an empty answer keeps the default."""
    import jsonschema

    choices = spec.get("enum") or next(
        (option["enum"] for option in spec.get("anyOf", []) if "enum" in option), None
    )
    hint = f" [{'/'.join(choices)}]" if choices else ""
    while True:
        text = ask(f"{spec.get('title', name)}{hint}").strip()
        if not text and not required:
            return spec.get("default")
        value: object = text
        if any(t.get("type") == "number" for t in [spec, *spec.get("anyOf", [])]):
            try:
                value = float(text)
            except ValueError:
                echo(f"  {text!r} is not a number")
                continue
        try:
            jsonschema.validate(value, spec)
            return value
        except jsonschema.ValidationError as error:
            echo(f"  {error.message}")


def answer_in_terminal(flow_run_id: str, ask, echo) -> dict:
    """Show a paused run's comparisons, ask each field (`ask(prompt) -> text`), and resume the run
    with the answers. Returns the answers."""
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    schema, description = paused_form(flow_run_id)
    echo(description)
    required = set(schema.get("required", []))
    answers = {
        name: _ask_field(name, spec, name in required, ask, echo)
        for name, spec in schema["properties"].items()
    }
    resume_flow_run(UUID(flow_run_id), run_input=answers)
    return answers
