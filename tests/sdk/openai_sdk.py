#!/usr/bin/env python3
"""The official `openai` Python SDK against `igw serve` (embedded simulated pool).

Usage: openai_sdk.py PATH_TO_IGW_BINARY
Starts `igw serve` on ephemeral ports, drives chat and completions, streaming and not, through the
SDK, and checks what a user would see. Prints 'N passed, M failed' and exits non-zero on failure.
"""
import re
import subprocess
import sys
import traceback

import openai

MODEL = "meta-llama/Llama-2-7b-hf"


def start(binary):
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--sim-time-scale", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()  # the ready line is printed once both listeners are bound
    m = re.search(r"listening on (http://[0-9.:]+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"igw serve did not print its ready line: {line!r}")
    return proc, m.group(1)


def main():
    proc, url = start(sys.argv[1])
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    passed, failed = 0, 0

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
            passed += 1
            print(f"PASS {name}")
        except Exception:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()

    def chat():
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8,
            extra_body={"ignore_eos": True},
        )
        assert r.model == MODEL, r.model
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].message.content
        assert r.usage.completion_tokens == 8, r.usage

    def chat_stream():
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=6, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        pieces, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        assert len(pieces) == 6, pieces
        assert usage is not None and usage.completion_tokens == 6, usage

    def completion():
        r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, extra_body={"ignore_eos": True})
        assert r.choices[0].text
        assert r.usage.completion_tokens == 5

    def completion_stream():
        n = sum(1 for c in client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True, extra_body={"ignore_eos": True},
        ) if c.choices and c.choices[0].text)
        assert n == 4, n

    def bad_request():
        try:
            client.completions.create(model=MODEL, prompt="", max_tokens=4)
        except openai.BadRequestError as e:
            assert e.status_code == 400
        else:
            raise AssertionError("an empty prompt must be rejected with 400")

    def models():
        ids = [m.id for m in client.models.list()]
        assert MODEL in ids, ids

    try:
        for name, fn in [("chat", chat), ("chat_stream", chat_stream), ("completion", completion),
                         ("completion_stream", completion_stream), ("bad_request", bad_request), ("models", models)]:
            check(name, fn)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
