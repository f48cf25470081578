"""A lean OpenAI-compatible chat server with a fixed latency, for the benchmarks.

It answers ``POST .../chat/completions`` the way ``tests/support/llm_server.py``
does (a ReAct "Final Answer" for plain prompts, an instance of the schema for a
JSON-schema ``response_format``), but on asyncio streams with keep-alive and no
recording, so that hundreds of calls a second, or 64 calls waiting out a
1-second latency at once, cost it little CPU. Run it as
``python -m bench.stub_llm --port P --latency-s 1.0``; it prints ``ready`` once
it listens.
"""

# ruff: noqa: T201

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from tests.support.llm_server import instance_of  # one JSON-schema filler for the scripted servers

_FINAL = (
    "Thought: I now can give a great answer\n"
    "Final Answer: ## Findings\n\nA fixed benchmark answer: three short paragraphs of findings would go here.\n"
)


class StubLLM:
    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.calls = 0
        self._schemas: dict[str, str] = {}  # the answer per schema, built once

    def completion(self, body: dict[str, Any]) -> bytes:
        self.calls += 1
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = response_format["json_schema"]["schema"]
            key = json.dumps(schema, sort_keys=True)
            content = self._schemas.get(key)
            if content is None:
                content = self._schemas[key] = json.dumps(instance_of(schema, schema.get("$defs", {}), "text"))
        else:
            content = _FINAL
        words = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
        answer = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "bench-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": words,
                "completion_tokens": len(content.split()),
                "total_tokens": words + len(content.split()),
            },
        }
        return json.dumps(answer).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                length = 0
                while True:
                    header = await reader.readline()
                    if header in {b"\r\n", b"\n", b""}:
                        break
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                raw = await reader.readexactly(length) if length else b"{}"
                path = request_line.split(b" ")[1] if b" " in request_line else b"/"
                if not path.rstrip(b"/").endswith(b"/chat/completions"):
                    status, data = b"404 Not Found", b'{"error": {"message": "no such route"}}'
                else:
                    if self.latency_s:
                        await asyncio.sleep(self.latency_s)
                    status, data = b"200 OK", self.completion(json.loads(raw))
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def main(port: int, latency_s: float) -> None:
    stub = StubLLM(latency_s)
    server = await asyncio.start_server(stub.handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-s", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.latency_s))
