"""The real agent on the web: the CLI's WebFetch and curl in the real image reach an allowed page
through the host's egress and are refused local addresses before anything leaves (strace of
the egress process); WebSearch is an API request through the credential proxy."""

from __future__ import annotations

import json

import pytest
from system_harness import SECRET
from egress_harness import (
    Strace, egress_lines, private_hosts, wait_lines)
from web_sites import PAGE


def agent_egress_system(make_agent_system, tmp_path, certs, ports: list[int]):
    """The real agent image with the proxy in its own mount namespace, where pages.test is
    127.0.0.1 (opened by this config) and internal.test a private address. Allowlist mode
    with those names: anything else the CLI might try is refused by name, never looked up."""
    # the CLI (node) trusts the test CA as curl does with --cacert: TLS stays end to end
    s = make_agent_system(extra_env=["CLAUDE_CODE_MAX_RETRIES=0", "NODE_EXTRA_CA_CERTS=/workspace/group/ca.pem"],
                          settings={"egress": {
        "mode": "allowlist", "allow_addresses": ["127.0.0.1"], "ports": [80, 443, *ports],
        "allow_domains": ["pages.test", "internal.test", "10.0.0.1", "169.254.169.254"]}})
    s.stop("egress")
    s.wrap["egress"] = private_hosts(tmp_path / "hosts", {"pages.test": "127.0.0.1", "internal.test": "10.1.2.3"})
    s.start("egress")
    group = s.state / "groups" / "main"
    (group / "ca.pem").write_bytes((certs / "ca.pem").read_bytes())
    # WebFetch first asks api.anthropic.com whether a domain may be fetched; a test must not
    # reach a public host, so this group's project settings turn that lookup off.
    (group / ".claude").mkdir(exist_ok=True)
    (group / ".claude" / "settings.json").write_text(json.dumps({"skipWebFetchPreflight": True}))
    return s


def tool_outputs(fake_api) -> dict[str, str]:
    """Every tool_result the CLI sent, by tool_use id, as text."""
    from fake_anthropic import content_text, last_user_content, tool_results
    out = {}
    for req in fake_api.message_requests():
        for result in tool_results(last_user_content(req["body"])):
            content = result["content"]
            out[result["tool_use_id"]] = content if isinstance(content, str) else content_text(content)
    return out


@pytest.mark.podman
def test_agent_curl_and_webfetch_reach_an_allowed_page(make_agent_system, fake_api, sites, certs, tmp_path,
                                                     need_root_and_strace):
    page, tls_page = sites(), sites(tls=True)
    s = agent_egress_system(make_agent_system, tmp_path, certs, [page.port, tls_page.port])
    fake_api.then({"tool_use": {"name": "Bash", "input": {"description": "fetch pages", "command": (
        f"curl -sS --max-time 30 http://pages.test:{page.port}/page; echo; "
        f"curl -sS --max-time 30 --cacert /workspace/group/ca.pem https://pages.test:{tls_page.port}/tls")}}},
                  # WebFetch makes http:// https://, fetches, then asks the model about the page: the
                  # fake's default answer echoes that request, page and all
                  {"tool_use": {"name": "WebFetch", "input": {
                      "url": f"https://pages.test:{tls_page.port}/webfetch", "prompt": "What is the marker?"}}})
    w = s.watch("main")
    s.send("main", "fetch the pages")
    assert w.reply(120) == "tool done"
    curl, webfetch = tool_outputs(fake_api).values()
    assert curl.count("PELICAN-7731") == 2
    assert "Web page content" in webfetch and "PELICAN-7731" in webfetch
    assert [r["path"] for r in page.requests] == ["/page"]
    assert [r["path"] for r in tls_page.requests] == ["/tls", "/webfetch"]
    # one line per connection, with its group; nothing else left the container
    lines = wait_lines(s, 3)
    assert [(x["GROUP"], x["HOST"], x["VERDICT"]) for x in lines] == [("main", "pages.test", "allowed")] * 3
    assert [x["PORT"] for x in lines] == [str(page.port), str(tls_page.port), str(tls_page.port)]
    assert all(int(x["BYTES_IN"]) >= len(PAGE) for x in lines)
    # the API credential went to the API only
    assert not any(SECRET in json.dumps(r["headers"]) for r in page.requests + tls_page.requests)
    assert {r["headers"].get("x-api-key") for r in fake_api.message_requests()} == {SECRET}


@pytest.mark.podman
def test_agent_requests_to_local_addresses_are_refused_before_leaving(make_agent_system, fake_api, sites, certs,
                                                                     tmp_path, need_root_and_strace):
    page = sites()
    s = agent_egress_system(make_agent_system, tmp_path, certs, [page.port])
    trace = Strace(s.procs["egress"].pid, tmp_path / "strace.txt")
    probes = [f"http://pages.test:{page.port}/first",  # allowed: shows the trace is live
              "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://internal.test/",
              "https://10.0.0.1/", "https://169.254.169.254/", "https://internal.test/"]
    fake_api.then({"tool_use": {"name": "Bash", "input": {"description": "probe", "command": "; ".join(
        f"echo '## {url}'; curl -sS --max-time 30 {url} 2>&1" for url in probes)}}},
                  {"tool_use": {"name": "WebFetch", "input": {"url": "https://internal.test/x", "prompt": "?"}}},
                  {"tool_use": {"name": "WebFetch", "input": {"url": "https://169.254.169.254/", "prompt": "?"}}})
    w = s.watch("main")
    s.send("main", "probe the network")
    try:
        assert w.reply(120) == "tool done"
    finally:
        traced = trace.stop()
    curl, webfetch_name, webfetch_metadata = tool_outputs(fake_api).values()
    answers = dict(part.split("\n", 1) for part in curl.split("## ")[1:])
    assert "PELICAN-7731" in answers[probes[0]]
    for url in probes[1:4]:  # plain http: the agent reads the rule in the 403's body
        assert "rule: local-address" in answers[url] and "agents may not reach local addresses" in answers[url]
    assert "internal.test resolves to local addresses only: 10.1.2.3 is private" in answers[probes[3]]
    for url in probes[4:]:  # https: curl reports the refused CONNECT
        assert "CONNECT tunnel failed, response 403" in answers[url], answers[url]
    assert "proxy refused the connection" in webfetch_name and "proxy refused" in webfetch_metadata
    # refused by the proxy, by rule, one line per connection, with its group
    lines = wait_lines(s, 9)
    refused = [(x["HOST"], x["PORT"]) for x in lines if x["VERDICT"] == "refused"]
    assert sorted(refused) == sorted([("10.0.0.1", "80"), ("169.254.169.254", "80"), ("internal.test", "80"),
                                      ("10.0.0.1", "443"), ("169.254.169.254", "443"), ("internal.test", "443"),
                                      ("internal.test", "443"), ("169.254.169.254", "443")])
    assert all(x["RULE"] == "local-address" and x["GROUP"] == "main" for x in lines if x["VERDICT"] == "refused")
    # ... before any packet left: the proxy never even called connect() for them
    assert f"htons({page.port})" in traced
    for address in ("10.0.0.1", "169.254.169.254", "10.1.2.3"):
        assert f'"{address}"' not in traced, address


@pytest.mark.podman
def test_websearch_is_an_api_request_through_the_credential_proxy(make_agent_system, fake_api):
    """WebSearch runs at the API (a server-side tool): the CLI asks the Messages API with the
    web_search tool, through api.sock like every model request; nothing goes through web.sock."""
    s = make_agent_system()

    def search_results(body: dict) -> dict:
        return {"text": "Search results: pelicans are large water birds (PELICAN-7731)."}

    fake_api.then({"tool_use": {"name": "WebSearch", "input": {"query": "pelican facts"}}}, search_results)
    w = s.watch("main")
    s.send("main", "search the web for pelicans")
    assert w.reply(120) == "tool done"
    requests = fake_api.message_requests()
    searching = [r for r in requests if any(str(t.get("type", "")).startswith("web_search")
                                            for t in r["body"].get("tools", []))]
    print(json.dumps([r["body"].get("tools") for r in searching])[:2000])
    assert len(searching) == 1
    assert searching[0]["headers"]["x-api-key"] == SECRET  # the proxy added the credential: it came through
    assert s.log("proxy").count("POST /v1/messages -> 200") == len(requests)
    [result] = tool_outputs(fake_api).values()
    assert "PELICAN-7731" in result
    assert egress_lines(s) == []
