"""A WhatsApp voice note, end to end (issue 27): a real Ogg/Opus note made by espeak-ng arrives
as a real neonize MessageEv (through neonize's own dispatch, downloaded through the recording
client), the channel stores it, the queue asks, the runner transcribes it in its container,
and the real agent's (fake) Messages API sees the labelled transcript in its prompt."""

from __future__ import annotations

import asyncio
import html
import time
import types

import msgspec
from fake_anthropic import content_text, last_user_content
from neonize.aioze.events import ConnectedEv
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import AudioMessage
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
from system_harness import DAEMONS, SECRET
from voice_notes import make_note
from whatsapp_harness import (
    OWNER,
    RecordingClient,
    jid,
    message_ev,
    neonize_dispatch,
    wait_until,
)
from whatsapp_offline import link_session


def test_a_whatsapp_voice_note_reaches_the_real_agent_as_a_labelled_transcript(
        make_system, real_agent_image, podman_service, fake_api, transcribe_image, tmp_path, monkeypatch):
    from nanoclaw.channels.whatsapp import WhatsAppBackend
    from nanoclaw.core import config_file
    from nanoclaw.core.models import open_db
    from nanoclaw.daemons.channel import ChannelDaemon

    s = make_system(proxy_upstream=fake_api.url, voice={"image": transcribe_image},
                    container={"image": real_agent_image, "podman_url": podman_service, "idle_timeout": 2.0,
                               "timeout": 120.0, "extra_env": ["CLAUDE_CODE_MAX_RETRIES=0"]})
    s.set_credential(SECRET)
    s.cli("groups", "add", "main", "--main", "--jid", f"{OWNER}@s.whatsapp.net")
    s.start(*[d for d in DAEMONS if d != "channel"])  # the channel runs here, on the recording client
    for key in ("NANOCLAW_CONFIG", "NANOCLAW_STATE_DIR", "NANOCLAW_RUNTIME_DIR", "NANOCLAW_CONFIG_DIR"):
        monkeypatch.setenv(key, s.env[key])
    cfg = msgspec.structs.replace(config_file.load(), channels=("whatsapp",))
    monkeypatch.setattr(WhatsAppBackend, "client_factory", staticmethod(RecordingClient))
    link_session(cfg.state_dir / "whatsapp" / "session.db", OWNER)
    open_db(cfg.db_path)
    note = make_note(tmp_path / "note.ogg", "What is the weather like in Lisbon today?").read_bytes()

    async def go() -> tuple[str, list]:
        daemon = ChannelDaemon(cfg)
        await daemon.setup()
        try:
            wa = next(b for b in daemon.backends if isinstance(b, WhatsAppBackend))
            client = wa.conn.client
            await wait_until(lambda: ("connect",) in client.calls)
            await client.event.handlers[ConnectedEv](client, ConnectedEv(status=True))
            client.media = note
            with neonize_dispatch(types.SimpleNamespace(client=client)) as deliver:
                ev = message_ev(jid(OWNER), jid(OWNER), "3EB0VOICE1", from_me=True, body=WAMessage(
                    audioMessage=AudioMessage(PTT=True, mimetype="audio/ogg; codecs=opus", fileLength=len(note),
                                              seconds=3)))
                await asyncio.get_running_loop().run_in_executor(None, deliver, ev)  # from another thread, as Go
                end = time.monotonic() + 180
                while time.monotonic() < end:
                    prompts = [content_text(last_user_content(r["body"])) for r in fake_api.message_requests()]
                    hit = [p for p in prompts if "<transcript " in p]
                    if hit:
                        return hit[0], list(client.calls)
                    await asyncio.sleep(0.2)
                raise AssertionError("no prompt with a transcript reached the API:\n" + s.log("queue")[-2000:]
                                     + s.log("runner")[-2000:])
        finally:
            await daemon.shutdown()

    prompt, calls = asyncio.run(go())
    assert ("download_any", "audioMessage") in calls  # the note came through the client's download
    assert 'kind="voice note" file="/workspace/group/inbox/3EB0VOICE1.ogg" type="audio/ogg"' in prompt
    assert '<transcript engine="faster-whisper" model="tiny.en" language="en" duration="' in prompt
    assert "it may contain errors" in prompt and "not transcribed" not in prompt
    heard = html.unescape(prompt.split("<transcript ", 1)[1].split(">", 1)[1].split("</transcript>")[0]).lower()
    assert "weather" in heard and "lisbon" in heard, heard
