"""Serve the fake Messages API inside the system-test machine (as its own unit).

    python fake_api_main.py PORT LOG

Every request is appended to LOG as one JSON line: path, the credential
headers that reached it, and the last chat message it carried, so the test can
see what the proxy forwarded.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_anthropic import (FakeAnthropic, content_text, default_responder, last_user_content,  # noqa: E402
                            prompt_message, tool_results)


def responder(body: dict) -> dict:
    """As the default (an echo), but "bash: COMMAND" runs COMMAND with the agent's Bash tool
    and the answer after it is "tool done: " and what the command printed."""
    results = tool_results(last_user_content(body))
    if results:
        return {"text": "tool done: " + " ".join(content_text(r.get("content")) for r in results)}
    asked = prompt_message(body)
    if asked.startswith("bash: "):
        return {"tool_use": {"name": "Bash", "input": {"command": asked[len("bash: "):],
                                                       "description": "the test's command"}}}
    return default_responder(body)


port, log = int(sys.argv[1]), Path(sys.argv[2])
api = FakeAnthropic()
api.responder = responder
api.start(port)
seen = 0
while True:
    time.sleep(0.1)
    with api.lock:
        new, seen = api.requests[seen:], len(api.requests)
    with log.open("a") as f:
        for r in new:
            f.write(json.dumps({"path": r["path"], "x-api-key": r["headers"].get("x-api-key", ""),
                                "authorization": r["headers"].get("authorization", ""),
                                "message": prompt_message(r["body"]) if r["body"] else ""}) + "\n")
