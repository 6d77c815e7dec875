"""Drives a running Passerelle with the official `openai` Python client.

Usage: python3 scripts/openai_client_check.py BASE_URL API_KEY MODEL_ID

Checks chat completions with and without streaming, text completions, the model list, and that a
wrong key gets 401 in OpenAI's error shape. Exits non-zero on the first failure.
"""

import sys

import openai


def main() -> None:
    base_url, api_key, model = sys.argv[1:4]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=60)

    models = [m.id for m in client.models.list()]
    assert model in models, f"{model} not in {models}"

    messages = [{"role": "user", "content": "Say hello."}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    print(f"chat: {choice.message.content!r} ({choice.finish_reason}, {whole.usage.completion_tokens} tokens)")

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for streamed in chunk.choices:
            pieces.append(streamed.delta.content or "")
            finish = streamed.finish_reason or finish
    assert "".join(pieces) == choice.message.content, ("".join(pieces), choice.message.content)
    assert finish == choice.finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    print(f"chat stream: {len(pieces)} chunks, same text, usage {usage.total_tokens}")

    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert completion.choices[0].finish_reason in ("stop", "length")
    print(f"completion: {completion.choices[0].text!r}")

    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="psk-wrong", max_retries=0)
    try:
        wrong.chat.completions.create(model=model, messages=messages, max_tokens=2)
    except openai.AuthenticationError as err:
        assert err.status_code == 401
        assert err.body and err.body.get("message"), err.body
        print(f"wrong key: 401 {err.body.get('code')!r}")
    else:
        raise AssertionError("a wrong key was accepted")

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
    except openai.NotFoundError as err:
        print(f"unknown model: 404 {err.body.get('code')!r}")
    else:
        raise AssertionError("an unknown model was accepted")

    print("openai client check: 6 passed, 0 failed")


if __name__ == "__main__":
    main()
