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


def _message(body) -> str:
    return check_chat_request(body, "m").message


def test_each_problem_is_named():
    assert "JSON object" in _message([OK])
    assert "non-empty list" in _message({**OK, "messages": []})
    bad_role = {**OK, "messages": [OK["messages"][0], {"role": "wizard", "content": "x"}]}
    assert "messages[1].role" in _message(bad_role)
    no_content = {**OK, "messages": [{"role": "user"}]}
    assert "messages[0].content" in _message(no_content)
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    with_image = {**OK, "messages": [{"role": "user", "content": [image]}]}
    assert "messages[0].content[0] must be" in _message(with_image)
    assert check_chat_request(with_image, "m").param == "messages"
    nameless = check_chat_request({"messages": OK["messages"]}, "m")
    assert (nameless.status, nameless.param) == (400, "model")


def test_malformed_requests_are_400_and_an_unknown_model_is_404_model_not_found():
    assert check_chat_request({**OK, "messages": []}, "m").status == 400
    assert check_chat_request({**OK, "messages": []}, "m").code is None
    unknown = check_chat_request({**OK, "model": "other"}, "m")
    assert (unknown.status, unknown.code) == (404, "model_not_found")
    assert "'other' is not served here" in unknown.message


def test_parameters_are_checked_before_the_engine_sees_them():
    from alignflow.serve import Limits

    limits = Limits(context=256)
    cases = {
        "temperature": [-1, "hot", 2.5, True],
        "top_p": [1.5, -0.1],
        "max_tokens": [-5, 0, 257, 1.5, "8"],
        "n": [2, 1000],
        "stream": ["yes", 1],
        "stop": [[1], ["a"] * 5, 3],
    }
    for param, values in cases.items():
        for value in values:
            problem = check_chat_request({**OK, param: value}, "m", limits)
            assert problem is not None and problem.param == param, (param, value)
    good = {**OK, "temperature": 0, "top_p": 1, "max_tokens": 256, "n": 1, "stop": ["\n"]}
    assert check_chat_request(good, "m", limits) is None
    many = {**OK, "messages": OK["messages"] * (limits.max_messages + 1)}
    assert check_chat_request(many, "m", limits).param == "messages"
