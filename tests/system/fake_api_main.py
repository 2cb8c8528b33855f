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
from fake_anthropic import FakeAnthropic, prompt_message  # noqa: E402

port, log = int(sys.argv[1]), Path(sys.argv[2])
api = FakeAnthropic().start(port)
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
