"""A minimal OpenAI-compatible chat-completions server for the tests (stdlib HTTP server, loopback).

    python openai_server.py --mode smollm2     real generations by SmolLM2-135M-Instruct (llmemf's local backend)
    python openai_server.py --mode scripted    behaviour chosen by the prompt, to prove retry and failure paths:
        prompt contains RATELIMIT -> 429 on the first 2 requests for that prompt, then an answer
        prompt contains FLAKY     -> 500 on the first request, then an answer
        prompt contains ALWAYS500 -> 500 every time
        prompt contains GARBAGE   -> 200 with a body that is not JSON
        prompt contains HANG      -> never answers within the client's timeout
        prompt contains THINK     -> an answer with <think>...</think> inline and reasoning_content
        anything else             -> "answer: <prompt>"
Prints "PORT <n>" on its first line. Appends one JSON line per request to --log
({"prompt", "status"}), flushed at once, so a test can count calls even after killing the client.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["smollm2", "scripted"], default="scripted")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    ap.add_argument("--log", default="")
    ap.add_argument("--hang", type=float, default=30.0)
    args = ap.parse_args()

    lock = threading.Lock()
    seen: Counter[str] = Counter()
    backend = None
    if args.mode == "smollm2":
        from llmemf.features.llm import EnrichConfig, LocalBackend

        backend = LocalBackend(EnrichConfig(max_tokens=16, threads=1))

    def log(prompt: str, status: int) -> None:
        if args.log:
            with lock, open(args.log, "a") as f:
                f.write(json.dumps({"prompt": prompt, "status": status}) + "\n")
                f.flush()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            prompt = req["messages"][-1]["content"]
            with lock:
                seen[prompt] += 1
                n = seen[prompt]
            if args.delay:
                time.sleep(args.delay)
            reasoning = None
            if args.mode == "smollm2":
                with lock:  # one generation at a time: the model is not thread-safe
                    backend.cfg.max_tokens = int(req.get("max_tokens") or 16)
                    backend.cfg.repetition_penalty = float(req.get("repetition_penalty") or 1.0)  # vLLM's extension field
                    gen = backend.generate([prompt])[0]
                text, tokens = gen.text, gen.completion_tokens
            else:
                if "HANG" in prompt:
                    log(prompt, 0)
                    time.sleep(args.hang)
                    return
                status = 200
                if "RATELIMIT" in prompt and n <= 2:
                    status = 429
                elif "ALWAYS500" in prompt or ("FLAKY" in prompt and n == 1):
                    status = 500
                if status != 200:
                    log(prompt, status)
                    return self._send(status, json.dumps({"error": {"message": f"scripted {status}"}}).encode())
                if "GARBAGE" in prompt:
                    log(prompt, 200)
                    return self._send(200, b"<html>this is not json")
                text = f"answer: {prompt}"
                if "THINK" in prompt:
                    reasoning = "step by step, secretly"
                    text = f"<think>{reasoning}</think>\n{text}"
                tokens = len(text.split())
            log(prompt, 200)
            msg = {"role": "assistant", "content": text}
            if reasoning:
                msg["reasoning_content"] = reasoning
            body = {
                "id": f"cmpl-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.get("model", "test"),
                "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": tokens, "total_tokens": tokens + len(prompt.split())},
            }
            self._send(200, json.dumps(body).encode())

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
