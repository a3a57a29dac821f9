"""The serving proxy's request checks: what it refuses, and the message that says why."""

from alignflow.serve import check_chat_request

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_well_formed_request_passes():
    assert check_chat_request(OK, "m") is None
    parts = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    }
    assert check_chat_request(parts, "m") is None


def test_each_problem_is_named():
    assert "JSON object" in check_chat_request([OK], "m")
    assert "not served here" in check_chat_request({**OK, "model": "other"}, "m")
    assert "non-empty list" in check_chat_request({**OK, "messages": []}, "m")
    bad_role = {**OK, "messages": [OK["messages"][0], {"role": "wizard", "content": "x"}]}
    assert "messages[1].role" in check_chat_request(bad_role, "m")
    no_content = {**OK, "messages": [{"role": "user"}]}
    assert "messages[0].content" in check_chat_request(no_content, "m")
