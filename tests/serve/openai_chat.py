"""The official `openai` client's chat completions against a
`dg serve --model models/digits --vlm models/tiny-qwen2.5-vl --api-key KEY --concurrency 1
--queue-size 1`.

usage: openai_chat.py BASE_URL KEY MODELS_DIR

MODELS_DIR holds vlm-goldens.json (transformers' greedy tokens for the tiny Qwen2.5-VL, which
`dg caption` reproduces) and the images its cases name. Greedy (no temperature) answers must equal
the goldens: text, new tokens (`completion_tokens`), prompt tokens with the image tokens, and the
finish reason.

Each check raises on failure; the script exits non-zero with the failed check's message.
"""
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import openai
from openai import OpenAI

BASE_URL, KEY, MODELS = sys.argv[1], sys.argv[2], Path(sys.argv[3])
VLM = "tiny-qwen2.5-vl"
GOLDENS = json.loads((MODELS / "vlm-goldens.json").read_text())
CASES = {case["name"]: case for case in GOLDENS["cases"]}

client = OpenAI(base_url=f"{BASE_URL}/v1", api_key=KEY, max_retries=0)


def data_url(relative: str) -> str:
    data = base64.b64encode((MODELS / relative).read_bytes()).decode()
    return f"data:image/png;base64,{data}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def messages(case: dict) -> list:
    """A case's user turn as the goldens render it: the images, then the prompt (a plain string
    when there are no images)."""
    if not case["images"]:
        return [{"role": "user", "content": case["prompt"]}]
    parts = [image_part(data_url(path)) for path in case["images"]]
    parts.append({"type": "text", "text": case["prompt"]})
    return [{"role": "user", "content": parts}]


def finish_reason(case: dict) -> str:
    return "stop" if case["stopped_at_eos"] else "length"


def expect_golden(completion, case: dict, what: str) -> None:
    assert completion.object == "chat.completion", f"{what}: object {completion.object!r}"
    assert completion.model == VLM, f"{what}: model {completion.model!r}"
    assert completion.id.startswith("chatcmpl-"), f"{what}: id {completion.id!r}"
    assert len(completion.choices) == 1, f"{what}: {len(completion.choices)} choices"
    choice = completion.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant", f"{what}: {choice}"
    assert choice.message.content == case["expected_text"], (
        f"{what}: {choice.message.content!r} != {case['expected_text']!r}"
    )
    assert choice.finish_reason == finish_reason(case), f"{what}: {choice.finish_reason}"
    usage = completion.usage
    expected = (len(case["input_ids"]), len(case["expected_ids"]))
    assert (usage.prompt_tokens, usage.completion_tokens) == expected, f"{what}: {usage}"
    assert usage.total_tokens == sum(expected), f"{what}: {usage}"


def completions_equal_the_goldens() -> None:
    # One image (ends at max_tokens), one image that ends at its end-of-sequence token, two
    # images, and text only.
    for name in ["image_96x64", "image_300x200_max_pixels", "two_images", "text_only"]:
        case = CASES[name]
        completion = client.chat.completions.create(
            model=VLM, messages=messages(case), max_tokens=case["max_new_tokens"]
        )
        expect_golden(completion, case, name)
    # max_completion_tokens is the newer name of the same limit.
    case = CASES["image_96x64"]
    completion = client.chat.completions.create(
        model=VLM, messages=messages(case), max_completion_tokens=case["max_new_tokens"]
    )
    expect_golden(completion, case, "max_completion_tokens")


def streams_add_up_to_the_same_answer() -> None:
    for name in ["image_96x64", "two_images", "image_300x200_max_pixels"]:
        case = CASES[name]
        chunks = list(
            client.chat.completions.create(
                model=VLM,
                messages=messages(case),
                max_tokens=case["max_new_tokens"],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert all(c.object == "chat.completion.chunk" for c in chunks), name
        assert len({c.id for c in chunks}) == 1, f"{name}: chunks of several ids"
        assert chunks[0].choices[0].delta.role == "assistant", f"{name}: {chunks[0]}"
        with_choice = [c for c in chunks if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in with_choice)
        assert text == case["expected_text"], f"{name}: streamed {text!r}"
        reasons = [c.choices[0].finish_reason for c in with_choice]
        assert reasons[-1] == finish_reason(case), f"{name}: {reasons}"
        assert all(r is None for r in reasons[:-1]), f"{name}: {reasons}"
        # The usage chunk comes last, with no choices.
        usage = chunks[-1].usage
        assert not chunks[-1].choices and usage is not None, f"{name}: {chunks[-1]}"
        expected = (len(case["input_ids"]), len(case["expected_ids"]))
        assert (usage.prompt_tokens, usage.completion_tokens) == expected, f"{name}: {usage}"
    # Without stream_options no usage chunk: the finish reason ends the stream.
    chunks = list(
        client.chat.completions.create(
            model=VLM, messages=messages(case), max_tokens=4, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length", chunks[-1]
    assert all(c.usage is None for c in chunks), chunks[-1]


def streams_end_with_done() -> None:
    case = CASES["image_96x64"]
    with client.chat.completions.with_streaming_response.create(
        model=VLM, messages=messages(case), max_tokens=5, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream"), response.headers
        data = [line for line in response.iter_lines() if line.startswith("data:")]
    assert data[-1] == "data: [DONE]", data[-3:]
    last = json.loads(data[-2][len("data:"):])
    assert last["choices"][0]["finish_reason"] == "length", last


def stop_strings_end_the_answer() -> None:
    case = CASES["image_96x64"]
    expected = case["expected_text"]
    for stop in [" What", ["never there", "/ tri"]]:
        first = stop if isinstance(stop, str) else stop[1]
        assert first in expected, f"the golden text lacks {first!r}"
        completion = client.chat.completions.create(
            model=VLM, messages=messages(case), max_tokens=case["max_new_tokens"], stop=stop
        )
        choice = completion.choices[0]
        assert choice.message.content == expected[: expected.index(first)], (
            f"stop {stop!r}: {choice.message.content!r}"
        )
        assert choice.finish_reason == "stop", f"stop {stop!r}: {choice.finish_reason}"
        chunks = list(
            client.chat.completions.create(
                model=VLM, messages=messages(case), max_tokens=case["max_new_tokens"],
                stop=stop, stream=True,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == choice.message.content, f"streamed with stop {stop!r}: {text!r}"
        assert chunks[-1].choices[0].finish_reason == "stop", chunks[-1]


def max_tokens_ends_with_length() -> None:
    case = CASES["image_300x200_max_pixels"]  # stops at its eos after 10 tokens when let run
    completion = client.chat.completions.create(model=VLM, messages=messages(case), max_tokens=3)
    assert completion.choices[0].finish_reason == "length", completion
    assert completion.usage.completion_tokens == 3, completion.usage
    assert completion.usage.prompt_tokens == len(case["input_ids"]), completion.usage


def seeded_sampling_repeats() -> None:
    case = CASES["image_96x64"]
    answers = [
        client.chat.completions.create(
            model=VLM, messages=messages(case), max_tokens=16, temperature=1.0, top_p=0.95,
            seed=1234,
        ).choices[0].message.content
        for _ in range(2)
    ]
    assert answers[0] == answers[1], f"the same seed gave {answers}"
    # temperature 0 is greedy, as no temperature is.
    greedy = client.chat.completions.create(
        model=VLM, messages=messages(case), max_tokens=16, temperature=0, seed=99
    )
    assert greedy.choices[0].message.content == case["expected_text"], greedy


def models_lists_both() -> None:
    ids = [model.id for model in client.models.list().data]
    assert ids == ["digits", VLM], ids
    assert client.models.retrieve(VLM).id == VLM


def expect_bad_request(what: str, param: str, code=None, **fields) -> None:
    body = {"model": VLM, "max_tokens": 4, **fields}
    try:
        client.chat.completions.create(**body)
    except openai.BadRequestError as e:
        assert e.param == param, f"{what}: param {e.param!r}, not {param!r} ({e})"
        if code is not None:
            assert e.code == code, f"{what}: code {e.code!r}, not {code!r} ({e})"
    else:
        raise AssertionError(f"{what} was accepted")


def bad_requests_name_their_param() -> None:
    url_param = "messages[0].content[0].image_url"

    def image(url: str) -> list:
        return [{"role": "user", "content": [image_part(url), {"type": "text", "text": "hi"}]}]

    expect_bad_request("a data URL that is not base64", url_param, "invalid_image_url",
                       messages=image("data:image/png;base64,@@not base64@@"))
    expect_bad_request("a remote URL on a server that does not fetch them", url_param,
                       "remote_images_disabled",
                       messages=image("https://example.com/cat.png"))
    not_an_image = base64.b64encode(b"hello, not a picture").decode()
    expect_bad_request("image bytes that are no image", url_param,
                       messages=image(f"data:image/png;base64,{not_an_image}"))
    expect_bad_request("a data URL of text", url_param, "invalid_image_url",
                       messages=image(f"data:text/plain;base64,{not_an_image}"))
    case_messages = messages(CASES["text_only"])
    expect_bad_request("max_tokens 0", "max_tokens", messages=case_messages, max_tokens=0)
    expect_bad_request("max_tokens past the limit", "max_tokens", messages=case_messages,
                       max_tokens=32769)
    tiny = data_url("vlm-images/tiny_10x10.png")
    expect_bad_request("65 images", "messages", "too_many_images",
                       messages=[{"role": "user", "content": [image_part(tiny)] * 65}])
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    expect_bad_request("an audio part", "messages[0].content[1].type",
                       "unsupported_content_part",
                       messages=[{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                              audio]}])
    expect_bad_request("a tool message", "messages[0].role",
                       messages=[{"role": "tool", "content": "42", "tool_call_id": "x"}])
    expect_bad_request("n=2", "n", messages=case_messages, n=2)
    expect_bad_request("temperature 3", "temperature", messages=case_messages, temperature=3)
    # The model refuses an image smaller than one patch: still a 400, also when streaming
    # (the stream starts only once a token is out).
    for stream in [False, True]:
        try:
            client.chat.completions.create(model=VLM, messages=image(tiny), max_tokens=4,
                                           stream=stream)
        except openai.BadRequestError as e:
            assert "patch" in str(e), e
        else:
            raise AssertionError(f"a 10x10 image was accepted (stream={stream})")


def raw_post(body: bytes, headers: dict) -> tuple:
    request = urllib.request.Request(
        f"{BASE_URL}/v1/chat/completions", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def bad_json_and_missing_keys() -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    status, body = raw_post(b'{"model": "x", "messages": [', {"content-type": "application/json",
                                                              **auth})
    assert status == 400 and body["error"]["code"] == "invalid_json", (status, body)
    status, body = raw_post(b'{"model": "x", "messages": []}',
                            {"content-type": "application/json"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key", (status, body)
    wrong = OpenAI(base_url=f"{BASE_URL}/v1", api_key=KEY + "-wrong", max_retries=0)
    try:
        wrong.chat.completions.create(model=VLM, messages=messages(CASES["text_only"]))
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", f"wrong key: code {e.code!r}"
    else:
        raise AssertionError("a wrong key was accepted")


def post_json(path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{BASE_URL}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def full_queue() -> None:
    # Chat completions wait in the image routes' queue: one worker and one place, both taken by
    # slow image jobs, leave no room for a completion.
    slow = {"prompt": "slow", "steps": 999, "n": 10}
    jobs = [post_json("/v1/jobs", slow)["id"] for _ in range(2)]
    try:
        client.chat.completions.create(model=VLM, messages=messages(CASES["text_only"]))
    except openai.RateLimitError as e:
        assert e.code == "queue_full", f"full queue: code {e.code!r}"
        assert int(e.response.headers["retry-after"]) >= 1, e.response.headers
    else:
        raise AssertionError("a completion past a full queue was accepted")
    finally:
        for job in jobs:
            post_json(f"/v1/jobs/{job}/cancel", {})


CHECKS = [
    completions_equal_the_goldens,
    streams_add_up_to_the_same_answer,
    streams_end_with_done,
    stop_strings_end_the_answer,
    max_tokens_ends_with_length,
    seeded_sampling_repeats,
    models_lists_both,
    bad_requests_name_their_param,
    bad_json_and_missing_keys,
    # Last: the cancelled slow jobs leave the queue only when the worker gets to them.
    full_queue,
]

if __name__ == "__main__":
    for check in CHECKS:
        try:
            check()
        except Exception as e:
            sys.exit(f"FAILED {check.__name__}: {type(e).__name__}: {e}")
        print(f"ok {check.__name__}")
