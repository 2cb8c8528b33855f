"""The credential proxy's own answers: refusals are valid JSON, whatever the request said."""

from __future__ import annotations

import json
import socket

import pytest


def test_a_refusal_is_valid_json_whatever_the_path_holds(offline_system):
    """The defect: the error body was built with % and the request path, so a quote broke it."""
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    for path in ('/etc/"passwd', "/x\\y", "/%s%d"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(10)
            c.connect(str(sock))
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403"), head
        error = json.loads(body)["error"]
        assert error["type"] == "nanoclaw_proxy" and repr(path) in error["message"]


def test_an_agents_api_path_cannot_forge_journal_fields(make_system, fake_api):
    """The relay's refusal names the path; the agent chooses it, so '=' in it must not become
    a journal field such as HOST= or VERDICT= (the egress daemon's fields)."""
    from system_harness import subjects
    s = make_system(proxy_upstream=fake_api.url)
    s.set_credential("sk-ant-api03-journal-test")
    s.cli("groups", "add", "main", "--main")
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(str(sock))
        c.sendall(b"GET /v1/x/host=evil.example/verdict=allowed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert c.recv(65536).startswith(b"HTTP/1.1 403")
    entry = s.wait_for(lambda: next((e for e in s.journal.of("proxy") if "/v1/x/" in e["MESSAGE"]), None),
                       10, what="the refusal's line")
    assert subjects(entry) == {"GROUP": "main"}, entry


def test_the_api_relay_and_the_web_are_two_programs_each_serving_without_the_other(make_system, fake_api):
    """nanoclaw-proxy (the credential) and nanoclaw-egress (hostile web traffic) are separate
    processes: with either one killed, the other still serves its socket in the same directory."""
    import signal

    from web_sites import PAGE, Site
    from proxy_harness import call
    site = Site()
    s = make_system(proxy_upstream=fake_api.url,
                    egress={"allow_addresses": ["127.0.0.1"], "ports": [80, 443, site.port]})
    s.set_credential("sk-ant-api03-split-test")
    s.cli("groups", "add", "main", "--main")
    s.start("proxy", "egress")
    d = s.run / "proxy" / "main"
    s.wait_for(lambda: (d / "api.sock").exists() and (d / "web.sock").exists(), 10, what="both sockets")
    assert s.procs["proxy"].pid != s.procs["egress"].pid
    s.stop("egress", sig=signal.SIGKILL)
    assert call(d / "api.sock")[0] == 200  # the API without egress
    s.start("egress")
    s.stop("proxy", sig=signal.SIGKILL)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:  # the web without the proxy
        c.settimeout(10)
        c.connect(str(d / "web.sock"))
        c.sendall(f"GET http://127.0.0.1:{site.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(PAGE)
    site.close()


# -- the API relay: what it passes, and how ----------------------------------------------

def raw_call(sock, request_line: str, body: bytes = b"", headers: str = "") -> tuple[int, dict]:
    """One request exactly as written, on a group's api.sock: (status, the JSON answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(20)
        c.connect(str(sock))
        c.sendall(f"{request_line} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest) if rest.startswith(b"{") else {}


def relay_system(make_system, fake_api, **settings):
    from proxy_harness import PRICES
    s = make_system(proxy_upstream=fake_api.url, usage={"prices": PRICES, **settings.pop("usage", {})}, **settings)
    s.set_credential("sk-ant-api03-relay-test")
    s.cli("groups", "add", "main", "--main")
    return s


def messages_body(model: str = "claude-test-1", **more) -> bytes:
    return json.dumps({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
                       **more}).encode()


def test_only_the_endpoints_the_cli_uses_are_relayed_and_the_target_is_parsed_once(make_system, fake_api):
    """A fragment, an absolute URL, dot segments, encoded separators or another API endpoint
    (batches, files, skills) never reach the API with the owner's key, whatever the model."""
    from system_harness import subjects
    s = relay_system(make_system, fake_api, usage={"allowed_models": ["claude-test-*"]},
                     budgets={"groups": {"main": {"day_usd": 0.01}}})
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    outside = messages_body("claude-opus-4-5")  # a model outside allowed_models
    for line in ("POST /v1/messages#x", "POST /v1/messages?beta=true#frag", "POST http://api.anthropic.com/v1/messages",
                 "POST /v1/./messages", "POST /v1/x/../messages", "POST /v1//messages", "POST /v1/%6dessages",
                 "POST /v1/messages%2Fcount_tokens", "POST /v1/messages/", "POST /v1/messages/batches",
                 "GET /v1/files", "DELETE /v1/files/file_011", "GET /v1/messages/batches/msgbatch_1/results",
                 "POST /v1/skills", "GET /v1/messages", "POST /v1/messages?beta=true&anthropic_version=x",
                 "POST /v1/messages?beta=%2F"):
        status, answer = raw_call(sock, line, outside)
        assert status == 403 and answer["type"] == "error", (line, status, answer)
        assert answer["error"]["message"].startswith("nanoclaw: "), answer
    assert fake_api.requests == []  # not one reached the API
    refused = s.wait_for(lambda: r if len(r := [e for e in s.journal.of("proxy") if "refused (403)" in e["MESSAGE"]])
                         == 17 else None, 10, what="a journal line per refusal")
    assert all(subjects(e) == {"GROUP": "main"} for e in refused)
    # the CLI's own call passes, with the upstream URL built from the parsed parts
    fake_api.usage = {"input_tokens": 5000, "output_tokens": 100}  # $0.0165: main's day is spent after it
    assert raw_call(sock, "POST /v1/messages?beta=true", messages_body())[0] == 200
    assert [r["path"] for r in fake_api.requests] == ["/v1/messages?beta=true"]
    # the spent budget holds for every spelling too (a fragment once made a call free)
    for line in ("POST /v1/messages", "POST /v1/messages#x"):
        assert raw_call(sock, line, messages_body())[0] == 403
    assert len(fake_api.requests) == 1


def test_the_api_gets_the_body_and_betas_that_were_checked(make_system, fake_api):
    """The body is parsed once and written again from what was checked: a duplicate key the
    API might read differently is gone. Only listed anthropic-beta values pass."""
    s = relay_system(make_system, fake_api, usage={"allowed_models": ["claude-test-*"]})
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    twice = b'{"model": "claude-opus-4-5", "max_tokens": 10, "messages": [], "model": "claude-test-1"}'
    betas = "anthropic-beta: files-api-2025-04-14, claude-code-20250219\r\nanthropic-beta: mcp-client-2025-04-04\r\n"
    assert raw_call(sock, "POST /v1/messages", twice, betas)[0] == 200
    [seen] = fake_api.requests
    assert seen["raw"].count(b'"model"') == 1 and seen["body"]["model"] == "claude-test-1"
    assert seen["headers"]["anthropic-beta"] == "claude-code-20250219"
    assert seen["headers"]["x-api-key"] == "sk-ant-api03-relay-test"
    assert raw_call(sock, "POST /v1/messages", b'{"model": "claude-test-1", "max_tokens": NaN}')[0] == 400
    assert raw_call(sock, "POST /v1/messages", b"[1, 2]")[0] == 400
    assert len(fake_api.requests) == 1
    dropped = s.wait_for(lambda: d if len(d := [e["MESSAGE"] for e in s.journal.of("proxy") if "dropped" in
                                                e["MESSAGE"]]) == 2 else None, 10, what="the dropped betas' lines")
    assert any("files-api-2025-04-14" in m for m in dropped) and any("mcp-client-2025-04-04" in m for m in dropped)


def test_server_side_tools_follow_the_groups_egress_policy(make_system, fake_api):
    """web_search, web_fetch and the MCP connector run at Anthropic: a group whose web is off
    cannot use them through api.sock, an allowlist limits their domains, a deny list blocks."""
    s = relay_system(make_system, fake_api, egress={
        "deny_domains": ["evil.example"],
        "groups": {"family": {"mode": "off"},
                   "work": {"mode": "allowlist", "allow_domains": ["wikipedia.org", "api.anthropic.com"],
                            "deny_domains": []}}})
    for group in ("family", "work"):
        s.cli("groups", "add", group)
    s.start("proxy")
    sock = {g: s.run / "proxy" / g / "api.sock" for g in ("main", "family", "work")}
    s.wait_for(lambda: all(p.exists() for p in sock.values()), 10, what="the API sockets")
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    fetch = {"type": "web_fetch_20250910", "name": "web_fetch"}
    client = {"name": "Bash", "description": "run", "input_schema": {"type": "object"}}
    mcp = [{"type": "url", "url": "https://mcp.example/sse", "name": "x"}]
    for body in (messages_body(tools=[search]), messages_body(tools=[client, fetch]),
                 messages_body(mcp_servers=mcp)):
        status, answer = raw_call(sock["family"], "POST /v1/messages", body)
        assert status == 403 and answer["error"]["type"] == "permission_error", answer
        assert "web egress is off" in answer["error"]["message"]
    assert fake_api.requests == []
    assert raw_call(sock["family"], "POST /v1/messages", messages_body(tools=[client]))[0] == 200  # client tools pass
    assert raw_call(sock["work"], "POST /v1/messages", messages_body(tools=[search]))[0] == 200
    assert raw_call(sock["work"], "POST /v1/messages", messages_body(
        tools=[{**fetch, "allowed_domains": ["en.wikipedia.org", "evil.example"]}]))[0] == 200
    assert raw_call(sock["work"], "POST /v1/messages", messages_body(
        tools=[{**search, "allowed_domains": ["evil.example"]}]))[0] == 403
    assert raw_call(sock["work"], "POST /v1/messages", messages_body(mcp_servers=mcp))[0] == 403
    assert raw_call(sock["main"], "POST /v1/messages", messages_body(
        tools=[{**search, "blocked_domains": ["ads.example"]}]))[0] == 200
    status, answer = raw_call(sock["main"], "POST /v1/messages", messages_body(
        tools=[{"type": "code_execution_20250825", "name": "code_execution"}]))
    assert status == 403 and "'code_execution_20250825' is not relayed" in answer["error"]["message"]
    sent = [r["body"]["tools"] for r in fake_api.requests]
    assert sent[0] == [client]
    assert sent[1] == [{**search, "allowed_domains": ["wikipedia.org", "api.anthropic.com"]}]
    assert sent[2] == [{**fetch, "allowed_domains": ["en.wikipedia.org"]}]
    assert sent[3] == [{**search, "blocked_domains": ["ads.example", "evil.example"]}]
    assert len(fake_api.requests) == 4


@pytest.mark.podman
def test_the_real_agents_session_stays_on_the_allowlist(make_agent_system, fake_api, tmp_path, need_root_and_strace):
    """How the relay's allowlist was found (nanoclaw/daemons/proxy/endpoints.py): the real
    agent image's CLI, through a session with tool use and a resumed session. Every request
    it makes must be one the relay passes; a newer CLI that calls anything else fails here."""
    from egress_harness import private_hosts
    from web_sites import Site, make_certs, server_tls

    from nanoclaw.daemons.proxy.endpoints import BETAS, ENDPOINTS
    certs = make_certs(tmp_path / "certs")
    page = Site(server_tls(certs))
    s = make_agent_system(extra_env=["CLAUDE_CODE_MAX_RETRIES=0", "NODE_EXTRA_CA_CERTS=/workspace/group/ca.pem"],
                          settings={"egress": {"allow_addresses": ["127.0.0.1"], "ports": [80, 443, page.port]}})
    (s.state / "groups" / "main" / "ca.pem").write_bytes((certs / "ca.pem").read_bytes())
    s.stop("egress")  # pages.test is 127.0.0.1 in egress's own /etc/hosts
    s.wrap["egress"] = private_hosts(tmp_path / "hosts", {"pages.test": "127.0.0.1"})
    s.start("egress")
    (s.state / "groups" / "main" / ".claude").mkdir(exist_ok=True)
    (s.state / "groups" / "main" / ".claude" / "settings.json").write_text(json.dumps({"skipWebFetchPreflight": True}))
    fake_api.then(
        {"tool_use": {"name": "Bash", "input": {"command": "echo hi > f.txt; ls", "description": "write"}}},
        {"tool_use": {"name": "Read", "input": {"file_path": "/workspace/group/f.txt"}}},
        {"tool_use": {"name": "Write", "input": {"file_path": "/workspace/group/g.txt", "content": "g"}}},
        {"tool_use": {"name": "Glob", "input": {"pattern": "*.txt"}}},
        {"tool_use": {"name": "Grep", "input": {"pattern": "hi"}}},
        {"tool_use": {"name": "TodoWrite", "input": {"todos": [
            {"content": "a", "status": "pending", "activeForm": "doing a"}]}}},
        {"tool_use": {"name": "WebSearch", "input": {"query": "pelican facts"}}},
        {"text": "search results"},
        {"tool_use": {"name": "mcp__nanoclaw__send_message", "input": {"text": "progress"}}},
        # last: its small model's summary of the page is the default responder's
        {"tool_use": {"name": "WebFetch", "input": {"url": f"https://pages.test:{page.port}/x", "prompt": "marker?"}}})
    w = s.watch("main")
    s.send("main", "do many things")
    assert {w.reply(180), w.reply(120)} == {"progress", "tool done"}
    s.send("main", "and once more")
    assert w.reply(180) == "tool done"
    seen = {(r.get("method", "POST"), r["path"].split("?")[0]) for r in fake_api.requests}
    assert seen and seen <= set(ENDPOINTS), seen
    sent = {b.strip() for r in fake_api.requests for b in r["headers"].get("anthropic-beta", "").split(",")}
    assert sent - {""} <= BETAS, sent - BETAS
    assert len(fake_api.message_requests()) >= 10
    assert not [e for e in s.journal.of("proxy") if "refused" in e["MESSAGE"] or "dropped" in e["MESSAGE"]]
    assert [r["path"] for r in page.requests] == ["/x"]  # WebFetch went through egress, its summary through here
    page.close()
