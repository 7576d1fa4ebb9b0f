"""Drives a running gateway with the official OpenAI Python client, unchanged, and prints what
it saw as one JSON document for the caller (the gateway's `openai_client` test) to check.

usage: openai_client_check.py BASE_URL API_KEY MODEL
"""

import json
import sys

import openai


def main() -> None:
    base_url, api_key, model = sys.argv[1:4]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    out = {"client_version": openai.__version__}

    out["models"] = [m.id for m in client.models.list()]

    c = client.completions.create(
        model=model, prompt="the quick brown fox", max_tokens=8, seed=42, temperature=0.7
    )
    out["completion"] = {
        "id": c.id,
        "object": c.object,
        "text": c.choices[0].text,
        "finish_reason": c.choices[0].finish_reason,
        "usage": c.usage.model_dump(),
    }

    texts, finishes = {}, {}
    for chunk in client.completions.create(
        model=model, prompt="the quick brown fox", max_tokens=8, seed=42, temperature=0.7,
        n=2, stream=True,
    ):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    out["completion_stream"] = {
        "texts": [texts[i] for i in sorted(texts)],
        "finish_reasons": [finishes[i] for i in sorted(finishes)],
    }

    messages = [
        {"role": "system", "content": "Speak in verse."},
        {"role": "user", "content": "Sing of kings."},
    ]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=10, seed=7, stop=["zzz"]
    )
    out["chat"] = {
        "id": chat.id,
        "object": chat.object,
        "role": chat.choices[0].message.role,
        "content": chat.choices[0].message.content,
        "finish_reason": chat.choices[0].finish_reason,
        "usage": chat.usage.model_dump(),
    }

    content, usage, roles, finish = "", None, [], None
    for chunk in client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=10, seed=7, stop=["zzz"],
        stream=True, stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    out["chat_stream"] = {"content": content, "usage": usage, "roles": roles, "finish_reason": finish}

    bad = openai.OpenAI(base_url=base_url, api_key="sk-not-a-valid-key-at-all", max_retries=0)
    try:
        bad.models.list()
        out["wrong_key"] = "accepted"
    except openai.AuthenticationError as e:
        out["wrong_key"] = {"error": type(e).__name__, "status": e.status_code, "code": e.code}

    try:
        client.chat.completions.create(
            model=model, messages=messages, response_format={"type": "json_object"}
        )
        out["unsupported"] = "accepted"
    except openai.BadRequestError as e:
        out["unsupported"] = {"error": type(e).__name__, "param": e.param, "code": e.code}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
