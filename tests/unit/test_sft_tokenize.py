"""SFT rows are tokenized row by row with their own tools: tool-call arguments keep exactly their own
keys (an Arrow `messages` column would merge every row's keys as nulls), and the mask covers replies."""

from __future__ import annotations

import json

from alignflow.models import tokenize_conversations, train_tokenizer

TEXTS = ["search recipes for chicken", "get the movie with id 7", "Here you go.", "Sure."] * 4


def call(name: str, arguments: dict) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments}}]}  # fmt: skip


ROWS = [
    {
        "messages": [
            {"role": "user", "content": "search recipes for chicken"},
            call("search_recipes", {"ingredients": ["chicken"]}),
            {"role": "tool", "content": '{"recipes": ["soup"]}'},
            {"role": "assistant", "content": "Here you go."},
        ],
        "tools": [{"type": "function", "function": {"name": "search_recipes", "parameters": {}}}],
    },
    {
        "messages": [
            {"role": "user", "content": "get the movie with id 7"},
            call("get_movie", {"movie_id": 7}),
            {"role": "tool", "content": '{"title": "Up"}'},
            {"role": "assistant", "content": "Sure."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "get the movie with id 7"},
            {"role": "assistant", "content": "Sure.", "loss_weight": 0.0},
        ]
    },
]


def test_each_row_keeps_its_own_call_arguments_and_trains_on_the_call():
    tokenizer = train_tokenizer(TEXTS, 300)
    dataset, untrained = tokenize_conversations(tokenizer, ROWS)
    assert untrained == 1  # the row whose only reply has loss_weight 0
    assert len(dataset) == 2
    first, second = (tokenizer.decode(ids) for ids in dataset["input_ids"])
    assert json.dumps({"ingredients": ["chicken"]}) in first and "movie_id" not in first
    assert json.dumps({"movie_id": 7}) in second and "ingredients" not in second
    assert "search_recipes" in first  # the row's tools are rendered
    for ids, mask in zip(dataset["input_ids"], dataset["assistant_masks"], strict=True):
        trained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        assert "<tool_call>" in trained  # the call is learned, not just the final reply
        assert "search recipes for chicken" not in trained and "movie with id" not in trained
