"""Rules of your own, named `rules:<function>` in the example configs beside this file.

A config file's folder is where its `module:function` rules, judges and labelers are imported from
(`run.code_dir`), so this module is found from any working directory. Each rule is called as
`function(prompts, completions, **columns) -> list[float]`: `prompts` are message lists,
`completions` the responses' text, and every other column of the prompt rows (here `family` and
`subject`, kept with `keep_columns`) arrives as a keyword list.
"""

from __future__ import annotations

from alignflow.demo import oracle_score


def judge(prompts, completions, family, subject, **_) -> list[float]:
    """How the people who wrote pairs.jsonl choose, in [0, 1]: a brief, positive review naming the
    product; a polite refusal of an unsafe request."""
    return [
        oracle_score(f, s, text) for f, s, text in zip(family, subject, completions, strict=True)
    ]


def brevity(prompts, completions, **_) -> list[float]:
    """0 up to 12 words, then -1/12 per word more: a rule reward that needs no columns."""
    return [-max(0, len(text.split()) - 12) / 12 for text in completions]
