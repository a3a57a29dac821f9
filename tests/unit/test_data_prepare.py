"""Preparing the pipeline's datasets: several sources per role, mixing weights, cleaning counted per
reason, stable splits, kept columns, and nothing half-written when a record is bad."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from alignflow.config import CleanConfig, DataConfig, DatasetConfig
from alignflow.data.errors import DataError
from alignflow.data.prepare import (
    ROLES,
    as_prompt,
    copies,
    fingerprint,
    prepare_datasets,
)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def alpaca(i: int) -> dict:
    return {
        "instruction": f"Describe item number {i} in detail",
        "input": "",
        "output": f"It is {i}.",
    }


def prompt(text: str, family: str = "review") -> dict:
    return {"prompt": text, "family": family}


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, list[DatasetConfig]]:
    """sft from two formats (alpaca JSONL with an exact duplicate, sharegpt CSV under other names),
    prompts with a family column, and held-out prompts one training prompt overlaps."""
    sft_a = write_jsonl(tmp_path / "a.jsonl", [alpaca(i) for i in range(20)] + [alpaca(3)])
    with (tmp_path / "b.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dialog"])
        for i in range(10):
            turns = [
                {"speaker": "customer", "text": f"请介绍第 {i} 号商品"},
                {"speaker": "agent", "text": f"第 {i} 号商品很好。"},
            ]
            writer.writerow([json.dumps(turns, ensure_ascii=False)])
    heldout_text = "Please write one honest review of the Harbor bicycle for my blog today"
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [prompt(f"Review product {i} briefly") for i in range(12)] + [prompt(heldout_text)],
    )
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [prompt(heldout_text, "unsafe")])
    return {
        "sft": [
            DatasetConfig(path=str(sft_a)),
            DatasetConfig(
                path=str(tmp_path / "b.csv"),
                format="sharegpt",
                columns={"conversations": "dialog"},
                message_keys={"from": "speaker", "value": "text"},
                roles={"human": "customer", "gpt": "agent"},
                weight=2.0,
            ),
        ],
        "preference_prompts": [DatasetConfig(path=str(prompts), keep_columns=["family"])],
        "rl_prompts": [DatasetConfig(path=str(prompts), keep_columns=["family"], weight=0.5)],
        "heldout": [DatasetConfig(path=str(heldout), keep_columns=["family"])],
    }


def files_config(**data) -> DataConfig:
    # these sources are a handful of rows: the minimum is tested on its own below
    return DataConfig(source="files", **{"min_examples": 1, **data})


def test_prepare_mixes_formats_and_weights_and_counts_every_removal(tmp_path, sources):
    out = tmp_path / "out"
    out.mkdir()
    cfg = files_config(**sources)
    reports = prepare_datasets(cfg, sources, out)

    sft = reports["sft"]
    assert [d.format for d in sft.datasets] == ["alpaca", "sharegpt"]
    assert sft.rows_in == 21 + 10
    assert sft.removed["duplicate_exact"] == 1  # alpaca(3) twice
    assert sft.train == 20 + 2 * 10  # weight 2.0 writes each sharegpt row twice
    rows = read_jsonl(out / "sft.jsonl")
    assert len(rows) == sft.train
    chinese = [r for r in rows if "商品" in r["messages"][0]["content"]]
    assert len(chinese) == 20
    assert [m["role"] for m in chinese[0]["messages"]] == ["user", "assistant"]

    pref = reports["preference_prompts"]
    assert pref.removed["eval_overlap"] == 1  # the training copy of the held-out prompt
    pref_rows = read_jsonl(out / "preference_prompts.jsonl")
    assert len(pref_rows) == pref.train == 12
    assert all(r["family"] == "review" and r["prompt"][0]["role"] == "user" for r in pref_rows)

    rl_rows = read_jsonl(out / "rl_prompts.jsonl")
    assert len(rl_rows) == reports["rl_prompts"].train
    assert 0 < len(rl_rows) < 12  # weight 0.5 keeps a hash-chosen part
    assert {json.dumps(r) for r in rl_rows} <= {json.dumps(r) for r in pref_rows}

    assert read_jsonl(out / "heldout.jsonl")[0]["family"] == "unsafe"
    for report in reports.values():  # counts add up: nothing dropped silently
        assert report.rows_in == report.kept + sum(report.removed.values())
    assert sft.kept == 20 + 10 and pref.kept == 12


def test_metrics_name_every_reason_per_role(tmp_path, sources):
    out = tmp_path / "out"
    out.mkdir()
    reports = prepare_datasets(files_config(**sources), sources, out)
    metrics = reports["sft"].metrics()
    assert metrics["sft_removed_duplicate_exact"] == 1
    assert metrics["sft_rows"] == 40 and metrics["sft_rows_in"] == 31
    assert (
        "sft: 31 rows in, removed: 1 duplicate_exact; wrote 40 train, 0 eval"
        in reports["sft"].lines()
    )


def test_weights_are_deterministic_and_stable_as_data_grows():
    rows = [{"prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(400)]
    kept = [copies(r, 0.25) for r in rows]
    assert set(kept) == {0, 1}
    assert 60 < sum(kept) < 140  # about a quarter
    more = rows + [{"prompt": [{"role": "user", "content": f"new {i}"}]} for i in range(400)]
    assert [copies(r, 0.25) for r in more[:400]] == kept  # old rows keep their fate
    assert {copies(r, 2.0) for r in rows} == {2}
    assert {copies(r, 1.5) for r in rows} == {1, 2}


def test_sft_eval_split_is_a_stable_hash_split(tmp_path, sources):
    out = tmp_path / "out"
    out.mkdir()
    cfg = files_config(**sources, eval_fraction=0.3)
    first = prepare_datasets(cfg, sources, out)["sft"]
    held = read_jsonl(out / "sft_eval.jsonl")
    assert first.eval == len(held) > 0
    # More data: every row held out before is still held out.
    extra = write_jsonl(tmp_path / "more.jsonl", [alpaca(i) for i in range(100, 160)])
    grown = {**sources, "sft": [*sources["sft"], DatasetConfig(path=str(extra))]}
    out2 = tmp_path / "out2"
    out2.mkdir()
    prepare_datasets(files_config(**grown, eval_fraction=0.3), grown, out2)
    held2 = {json.dumps(r, sort_keys=True) for r in read_jsonl(out2 / "sft_eval.jsonl")}
    assert {json.dumps(r, sort_keys=True) for r in held} <= held2
    train2 = {json.dumps(r, sort_keys=True) for r in read_jsonl(out2 / "sft.jsonl")}
    assert not held2 & train2


def test_prompts_can_come_from_sft_and_preference_rows():
    sft = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert as_prompt(sft) == {"prompt": [{"role": "user", "content": "q"}]}
    pair = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
        "family": "review",
    }
    assert as_prompt(pair) == {"prompt": [{"role": "user", "content": "q"}], "family": "review"}


def test_a_bad_record_raises_with_its_line_and_leaves_no_output(tmp_path, sources):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(alpaca(1)) + "\n" + '{"instruction": "x", "output": ""}\n')
    broken = {**sources, "sft": [DatasetConfig(path=str(bad))]}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError) as raised:
        prepare_datasets(files_config(**broken), broken, out)
    assert str(raised.value) == f"{bad}:2: output: is empty; expected non-empty text"
    assert not (out / "sft.jsonl").exists()  # only .partial files, which the stage removes
    assert not list(out.glob("sft*.jsonl"))


def test_on_error_skip_counts_the_bad_record_per_dataset(tmp_path, sources):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(alpaca(1)) + "\nnot json\n" + json.dumps(alpaca(2)) + "\n")
    skipping = {**sources, "sft": [DatasetConfig(path=str(bad))]}
    out = tmp_path / "out"
    out.mkdir()
    report = prepare_datasets(files_config(**skipping, on_error="skip"), skipping, out)["sft"]
    assert report.datasets[0].skipped == {"bad JSON": 1}
    assert report.datasets[0].problems == [
        f"{bad}:2: json: invalid JSON: Expecting value at column 1; expected one JSON object per line"
    ]
    assert report.metrics()["sft_skipped_bad_json"] == 1
    assert report.train == 2


def test_preference_rows_in_sft_role_are_refused(tmp_path, sources):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}]
    )
    wrong = {**sources, "sft": [DatasetConfig(path=str(pairs))]}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="gives preference rows; expected an SFT format"):
        prepare_datasets(files_config(**wrong), wrong, out)


def test_everything_removed_is_an_error_not_an_empty_dataset(tmp_path, sources):
    out = tmp_path / "out"
    out.mkdir()
    cfg = files_config(**sources, clean=CleanConfig(max_chars=5))
    with pytest.raises(DataError, match="sft: no rows left after loading and cleaning"):
        prepare_datasets(cfg, sources, out)


def test_files_source_needs_the_roles_its_shape_reads_and_demo_takes_none(sources):
    from alignflow.config import PipelineConfig

    data = {"source": "files", "sft": sources["sft"], "preference_prompts": sources["sft"]}
    with pytest.raises(ValueError, match="data.rl_prompts is needed"):
        PipelineConfig(data=data)
    with pytest.raises(ValueError, match="data.heldout is needed"):
        PipelineConfig(data=data, policy={"algorithm": "dpo"})
    with pytest.raises(ValueError, match="data.sft is set but data.source is 'demo'"):
        DataConfig(sft=sources["sft"])
    assert set(ROLES) == {"sft", "preferences", "preference_prompts", "rl_prompts", "heldout"}


def test_a_role_with_fewer_rows_than_the_minimum_stops_naming_the_setting(tmp_path, sources):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=r"data.sft: \d+ training rows .*data.min_examples \(50\)"):
        prepare_datasets(files_config(**sources, min_examples=50), sources, out)
    # the role's files are not left behind (the prepare stage removes the other roles' too)
    assert not list(out.glob("sft*"))


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [alpaca(1)])
    spec = DatasetConfig(path=str(path))
    before = fingerprint(spec)
    assert fingerprint(spec) == before
    write_jsonl(path, [alpaca(1), alpaca(2)])
    assert fingerprint(spec) != before
    assert fingerprint(DatasetConfig(path="someone/some-dataset")) == [
        "someone/some-dataset",
        "train",
    ]


def test_readme_files_config_is_a_valid_config():
    """The README's every-option `data.source: files` example loads; without its own judge it
    fails, naming evaluate.judge (the demo's oracle judges only the demo's data)."""
    import re

    import yaml

    from alignflow.config import ConfigError, build_config

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    tree = yaml.safe_load(next(b for b in blocks if "support_chats.csv" in b))
    cfg = build_config(tree)
    assert (cfg.evaluate.judge, cfg.retrain.judge) == ("my_rules:helpfulness",) * 2
    assert cfg.data.sft[1].roles == {"human": "customer", "gpt": "agent"}
    assert cfg.data.sft[2].format == "classification"
    assert [d.path for d in cfg.data.preferences][0] == "data/dpo_en_demo.json"
    del tree["evaluate"]
    with pytest.raises(ConfigError, match=r"evaluate.judge: name who scores the held-out samples"):
        build_config(tree)


def test_mapping_decodes_json_message_cells_but_leaves_json_looking_text(tmp_path):
    from alignflow.data.mapping import ColumnMapping

    mapping = ColumnMapping(message_keys={"role": "speaker", "content": "text"})
    cell = json.dumps([{"speaker": "user", "text": "hi"}])
    reply = json.dumps([{"name": "Bob"}])  # a reply that happens to be JSON: not messages
    mapped = mapping.apply({"messages": cell, "answer": reply})
    assert mapped["messages"] == [{"role": "user", "content": "hi"}]
    assert mapped["answer"] == reply


def test_a_template_alone_selects_the_classification_format(tmp_path):
    from alignflow.data.load import load_dataset_rows

    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "great phone", "label": "positive"}])
    rows, report = load_dataset_rows(
        path, template={"prompt": "Sentiment? {text}", "completion": "{label}"}
    )
    assert report.format == "classification"
    assert rows[0]["messages"][0]["content"] == "Sentiment? great phone"


def test_near_dedup_taking_a_large_share_is_a_warning_naming_the_setting(tmp_path):
    from alignflow import demo

    lead = " ".join(f"word{i}" for i in range(80))  # a long template every row shares
    rows = [
        {"instruction": f"{lead}The product is the {p['subject']}.", "input": "", "output": "Sure."}
        for p in demo.prompt_rows(0, 40, 0.0, 0.2, 1)
    ]  # one template, a product name apart: near duplicates to MinHash
    datasets = {"sft": [DatasetConfig(path=str(write_jsonl(tmp_path / "s.jsonl", rows)))]}
    out = tmp_path / "out"
    out.mkdir()
    report = prepare_datasets(files_config(**datasets), datasets, out)["sft"]
    near = report.removed["duplicate_near"]
    assert near >= 4
    [warning] = report.warnings()
    assert warning.startswith(f"data.sft: near dedup removed {near} of {report.rows_in} rows")
    assert "data.clean.near_dedup_threshold" in warning
    off = files_config(**datasets, clean=CleanConfig(near_dedup_threshold=None))
    assert prepare_datasets(off, datasets, out)["sft"].warnings() == []


def test_own_pairs_keep_their_content_and_are_split_by_prompt(tmp_path):
    pairs = [
        {"prompt": f"Question {i // 3}?", "chosen": f"Good answer {i}.", "rejected": f"Bad {i}."}
        for i in range(60)
    ]  # three pairs per prompt, as a ranking gives
    datasets = {"preferences": [DatasetConfig(path=str(write_jsonl(tmp_path / "p.jsonl", pairs)))]}
    out = tmp_path / "out"
    out.mkdir()
    reports = prepare_datasets(files_config(**datasets), datasets, out, pair_split=(0.3, "0"))
    report = reports["preferences"]
    rows = read_jsonl(out / "preferences.jsonl")
    assert [(r["prompt"][0]["content"], r["chosen"][0]["content"]) for r in rows] == [
        (p["prompt"], p["chosen"]) for p in pairs
    ]  # every pair, unchanged: pairs sharing a prompt are never near duplicates of each other
    assert {r["origin"] for r in rows} == {"user"}
    split = {}
    for row in rows:
        assert split.setdefault(row["prompt"][0]["content"], row["split"]) == row["split"]
    assert (report.train, report.eval) == (sum(r["split"] == "train" for r in rows),
                                           sum(r["split"] == "eval" for r in rows))  # fmt: skip
    assert 0 < report.eval < report.train
    sft_rows = {"sft": [DatasetConfig(path=str(write_jsonl(tmp_path / "a.jsonl", [alpaca(1)])))]}
    with pytest.raises(DataError, match="gives sft rows; expected a preference format"):
        prepare_datasets(
            files_config(preferences=sft_rows["sft"]), {"preferences": sft_rows["sft"]}, out
        )


def test_held_out_rows_keep_their_answer_as_the_reference():
    """A held-out set with answers keeps them (for BLEU/ROUGE-L); other prompt roles do not, and a
    KTO-style labelled completion is no gold answer."""
    from alignflow.data.prepare import as_prompt

    user = [{"role": "user", "content": "Review the kettle."}]
    chat = {"messages": [*user, {"role": "assistant", "content": "Great kettle."}]}
    assert as_prompt(chat, keep_reply=True) == {"prompt": user, "reference": "Great kettle."}
    assert as_prompt(chat) == {"prompt": user}
    completion = {"prompt": user, "completion": "Nice."}
    assert as_prompt(completion, keep_reply=True)["reference"] == "Nice."
    labelled = {"prompt": user, "completion": "Nice.", "label": False}
    assert "reference" not in as_prompt(labelled, keep_reply=True)
    own = {**chat, "reference": "Their own answer."}  # a kept column wins
    assert as_prompt(own, keep_reply=True)["reference"] == "Their own answer."


def test_a_gate_on_a_reference_metric_needs_the_reference_metric():
    from alignflow.config import ConfigError, load_config

    files = [
        "data.source=files", "data.sft=[{path: s.jsonl}]", "data.preferences=[{path: p.jsonl}]",
        "data.heldout=[{path: h.jsonl}]", "policy.algorithm=dpo", "evaluate.judge=reward_model",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r"registry.gate: rouge_l compares responses with refer"):
        load_config(None, [*files, "registry.gate=rouge_l"])
    with pytest.raises(ConfigError, match=r"retrain.gate: bleu compares"):
        load_config(None, [*files, "retrain.gate=bleu"])
    cfg = load_config(None, [*files, "retrain.gate=bleu", "evaluate.metrics=[{kind: reference}]"])
    assert (cfg.retrain.gate, cfg.evaluate.reference_column()) == ("bleu", "reference")
    # the demo's held-out rows carry answers, and its reference metric is on by default
    assert load_config(None, ["registry.gate=rouge_l"]).evaluate.reference_column() == "reference"
