"""Voice notes heard (issue 27), with real parts: espeak-ng notes in Ogg/Opus, the daemons as
processes, the transcription image in real containers, the scripted agent (which echoes the
last message of its prompt, so a reply shows what the agent was given)."""

from __future__ import annotations

import json
import os
import time

from podman_harness import _podman
from system_harness import DAEMONS
from voice_notes import LISBON, make_note, send_file, voice_system

TOKYO = "Andy, what time is it in Tokyo?"  # with the runner's initial prompt: " Andy, what time is it in Tokyo?"


def media_of(s, jid: str) -> list[dict]:
    with s.db() as con:
        rows = con.execute("select media from message where chat = ? and media is not null order by id",
                           (jid,)).fetchall()
    return [json.loads(r["media"]) for r in rows]


def test_a_voice_note_reaches_the_agent_as_a_labelled_transcript(make_system, agent_image, podman_service,
                                                                   transcribe_image, tmp_path):
    s = voice_system(make_system, agent_image, podman_service, transcribe_image)
    s.start()
    w = s.watch("main")
    send_file(s, "main", make_note(tmp_path / "lisbon.ogg", LISBON))
    reply = w.reply(120)
    w.close()
    # the agent got the file as today, and the transcript labelled as one
    assert 'kind="audio" file="/workspace/group/inbox/' in reply and 'lisbon.ogg"' in reply
    assert '<transcript engine="faster-whisper" model="tiny.en" language="en" duration="' in reply
    assert "may contain errors" in reply
    heard = reply.split("<transcript ", 1)[1].split(">", 1)[1].lower()
    assert "weather" in heard and "lisbon" in heard
    # the runner's copy of the note is gone, and no transcription container is left
    assert not any((s.state / "voice").iterdir()) if (s.state / "voice").exists() else True
    assert _podman("ps", "-a", "--filter", "label=nanoclaw.voice", "-q").stdout.strip() == ""
    # the journal: no transcript text in any field
    for e in s.journal.of("runner") + s.journal.of("queue"):
        assert "lisbon" not in json.dumps({k: v for k, v in e.items() if k != "MESSAGE"}).lower()


def test_a_spoken_trigger_wakes_a_trigger_only_group_and_an_untriggered_note_does_not(
        make_system, agent_image, podman_service, transcribe_image, tmp_path):
    s = voice_system(make_system, agent_image, podman_service, transcribe_image)
    s.cli("groups", "add", "family")  # needs the trigger, "@Andy"
    s.start()
    w = s.watch("family")
    send_file(s, "family", make_note(tmp_path / "lisbon.ogg", LISBON))  # no name: context only
    send_file(s, "family", make_note(tmp_path / "tokyo.ogg", TOKYO))
    reply = w.reply(180)
    assert "tokyo" in reply.lower() and "<transcript " in reply
    # the barrier: a typed trigger answered after both notes were through the pipeline
    token = f"barrier {os.urandom(3).hex()}"
    s.send("family", f"@Andy {token}")
    while (text := w.reply(120)) != f"echo: {token}":
        raise AssertionError(f"another reply came before the barrier's: {text[:300]}")
    w.close()
    with s.db() as con:
        jid = con.execute("select jid from \"group\" where folder='family'").fetchone()["jid"]
    replies = s.replies(jid)
    assert len(replies) == 2, replies  # the Tokyo note's, the barrier's: the Lisbon note woke nothing
    lisbon, tokyo = [m["transcript"] for m in media_of(s, jid)]
    assert lisbon["state"] == tokyo["state"] == "done"
    assert lisbon["trigger"] is False and tokyo["trigger"] is True


def test_corrupt_empty_and_over_long_notes_give_one_line_and_the_agent_still_answers(
        make_system, agent_image, podman_service, transcribe_image, tmp_path):
    s = voice_system(make_system, agent_image, podman_service, transcribe_image, max_seconds=5.0)
    s.start()
    w = s.watch("main")
    corrupt = tmp_path / "corrupt.ogg"
    corrupt.write_bytes(b"OggS" + os.urandom(4000))
    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    long_note = make_note(tmp_path / "long.ogg", LISBON, repeat=3)  # about 9 s
    expect = {corrupt: "it cannot be decoded as audio", empty: "the file is empty",
              long_note: "over the limit of 5 s"}
    for path, why in expect.items():
        send_file(s, "main", path)
        said = [w.reply(120), w.reply(120)]
        notice = [t for t in said if t.startswith("could not transcribe the voice note: ")]
        answer = [t for t in said if t.startswith("echo: ")]
        assert len(notice) == 1 and why in notice[0], said
        assert len(answer) == 1 and path.name in answer[0] and "could not transcribe the voice note" in answer[0]
    w.close()


def test_a_note_that_takes_too_long_is_given_up_and_answered(make_system, agent_image, podman_service,
                                                            transcribe_image, tmp_path):
    s = voice_system(make_system, agent_image, podman_service, transcribe_image, timeout=1.0)
    s.start()
    w = s.watch("main")
    t0 = time.monotonic()
    send_file(s, "main", make_note(tmp_path / "slow.ogg", LISBON))
    said = [w.reply(120), w.reply(120)]
    w.close()
    assert "could not transcribe the voice note: it took longer than 1 s" in said, said
    assert any(t.startswith("echo: ") for t in said)
    assert time.monotonic() - t0 < 90


def test_the_transcription_container_has_no_network_and_writes_nothing(podman_service, transcribe_image,
                                                                       container_options, tmp_path):
    """The spec the runner makes for a note, run with a probe as its command."""
    from dataclasses import replace

    from podman import PodmanClient

    from nanoclaw.core import config as config_mod
    from nanoclaw.daemons.runner import driver
    from nanoclaw.daemons.runner.transcribe import note_dir, spec
    from nanoclaw.daemons.runner.validate import SpecError, validate

    cfg = config_mod.Config(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run", config_dir=tmp_path / "etc",
                            container=config_mod.ContainerConfig(runtime=container_options["runtime"],
                                                                 ulimits=tuple(container_options["ulimits"])),
                            voice=config_mod.VoiceConfig(image=transcribe_image))
    body = {"message": 7, "group": "main", "file": "inbox/x.ogg", "job": "voice-7"}
    d = note_dir(cfg, 7)
    d.mkdir(parents=True)
    (d / "note").write_bytes(b"OggS")
    (d / "note").chmod(0o644)
    d.chmod(0o755)
    s = spec(cfg, body)
    assert validate(s, cfg)["/in"] == "group state" and s.network == "none"
    probe = ("import os, socket\n"
             "print('ifaces', sorted(os.listdir('/sys/class/net')))\n"
             "try:\n socket.create_connection(('1.1.1.1', 53), timeout=2); print('connected')\n"
             "except OSError as e: print('connect', e.errno)\n"
             "for p in ('/opt/model/x', '/in/x', '/in/note'):\n"
             " try: open(p, 'a').close(); print('wrote', p)\n"
             " except OSError as e: print('refused', p, e.errno)\n")
    probe_spec = replace(s, command=("/opt/venv/bin/python", "-c", probe))
    with PodmanClient(base_url=podman_service) as client:
        ctr = client.containers.create(probe_spec.image, **driver.options(probe_spec))
        try:
            ctr.start()
            ctr.wait(condition=["exited"])
            out = b"".join(ctr.logs(stdout=True, stderr=True)).decode()
        finally:
            ctr.remove(force=True)
    assert "ifaces ['lo']" in out, out
    assert "connected" not in out and "connect 101" in out, out  # ENETUNREACH
    assert "wrote" not in out and out.count("refused") == 3, out
    for bad in (replace(s, network="slirp4netns"),
                replace(s, mounts=tuple(replace(m, read_only=False) if m.target == "/in" else m for m in s.mounts)),
                replace(s, mounts=s.mounts + (replace(s.mounts[0], target="/workspace/group",
                                                      source=str(cfg.groups_dir / "main")),))):
        try:
            validate(bad, cfg)
        except SpecError:
            continue
        raise AssertionError(f"validate let through {bad}")


def test_status_shows_a_note_waiting_and_doctor_checks_the_engine(make_system, agent_image, podman_service,
                                                                   transcribe_image, tmp_path):
    s = voice_system(make_system, agent_image, podman_service, transcribe_image)
    s.start(*[d for d in DAEMONS if d != "runner"])  # nothing transcribes yet
    send_file(s, "main", make_note(tmp_path / "lisbon.ogg", LISBON))
    s.wait_for(lambda: "voice:    1 transcription(s) waiting" in s.cli("status", check=False).stdout, 30,
               what="status naming the waiting transcription")
    with s.db() as con:
        assert con.execute("select count(*) from job").fetchone()[0] == 0  # the turn waits for it
    w = s.watch("main")
    s.start("runner")
    assert "<transcript " in w.reply(120)
    w.close()
    assert "voice:    0 transcription(s) waiting" in s.cli("status", check=False).stdout
    doctor = s.cli("doctor", check=False).stdout
    assert f"voice engine: transcription image {transcribe_image}" in doctor
    line = next(x for x in doctor.splitlines() if "voice engine" in x)
    assert "missing" not in line, line
