"""The Anthropic credential: where it lives, how it is read, and how the owner sets it.

It is read by the proxy alone, and never enters a container, a log line or a
test's output. systemd hands it to the proxy unit with ``LoadCredential=``;
where systemd cannot (seen when systemd itself runs in a container, whose
``User=`` services get an empty or missing credentials directory), the proxy
reads the file itself, which then belongs to the service user (mode 0600) in
a directory others may traverse but not list (0711). ``nanoclaw credential
set`` finds out which of the two works here and arranges the file for it.

The file holds an API key (``sk-ant-api…``), an OAuth token (``sk-ant-oat…``),
or a line ``ANTHROPIC_API_KEY=…`` / ``CLAUDE_CODE_OAUTH_TOKEN=…``.

A second one, the voice API's (``[voice] engine = "api"``, ``nanoclaw credential set
--voice``), lives beside it and is handed over the same way: a bearer token (or a line
``OPENAI_API_KEY=…``). Its file may be there and empty: then none is set.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nanoclaw.core.config import Config

CREDENTIAL_NAME = "anthropic-credential"
VOICE_CREDENTIAL_NAME = "voice-api-credential"
OAUTH_BETA = "oauth-2025-04-20"


class CredentialError(Exception):
    """No usable credential; the text says where one is expected."""


@dataclass(frozen=True)
class Credential:
    kind: str  # "api_key" or "oauth"; "bearer": the voice API's
    secret: str

    def headers(self) -> list[tuple[str, str]]:
        if self.kind in ("oauth", "bearer"):
            return [("authorization", f"Bearer {self.secret}")]
        return [("x-api-key", self.secret)]

    def __repr__(self) -> str:  # never let a secret reach a log line by accident
        return f"Credential(kind={self.kind!r}, secret=<{len(self.secret)} chars>)"

    __str__ = __repr__


def file_path(cfg: Config, name: str = CREDENTIAL_NAME) -> Path:
    """Where the owner keeps it (what ``LoadCredential=`` copies from)."""
    return cfg.config_dir / "credentials" / name


def credential_path(cfg: Config, name: str = CREDENTIAL_NAME) -> Path:
    """systemd's ``LoadCredential=`` copy when it is there and readable, else the config file."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        try:
            if (Path(creds) / name).exists():
                return Path(creds) / name
        except OSError:  # some container hosts make the credentials dir unreadable to User=
            pass
    return file_path(cfg, name)


def parse(raw: str, where: str = "the credential") -> Credential:
    """Classify a credential's text; CredentialError when it holds none."""
    for line in raw.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"):
            value = value.strip().strip("'\"")
            return Credential("oauth" if key.strip() == "CLAUDE_CODE_OAUTH_TOKEN" else "api_key", value)
        if any(c.isspace() for c in line) or len(line) < 20:
            raise CredentialError(f"{where} does not look like an API key or OAuth token")
        return Credential("oauth" if line.startswith("sk-ant-oat") else "api_key", line)
    raise CredentialError(f"{where} is empty: set it with `nanoclaw credential set` (with sudo where the "
                          "configuration is root's)")


def parse_voice(raw: str, where: str = "the voice API credential") -> Credential:
    """The voice API's bearer token; CredentialError when there is none. Only visible ASCII:
    it goes into a header line."""
    for line in raw.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep and key.strip() == "OPENAI_API_KEY":
            line = value.strip().strip("'\"")
        if not 8 <= len(line) <= 4096 or any(not 0x21 <= ord(c) <= 0x7e for c in line):
            raise CredentialError(f"{where} does not look like an API key (8 or more visible characters)")
        return Credential("bearer", line)
    raise CredentialError(f"{where} is empty: set it with `nanoclaw credential set --voice` (with sudo where "
                          "the configuration is root's)")


def _read(cfg: Config, name: str, what: str, how: str) -> tuple[str, Path]:
    path = credential_path(cfg, name)
    try:
        st = path.stat()
        raw = path.read_text()
    except OSError as exc:
        raise CredentialError(f"no {what} readable at {path} ({exc.strerror}): set it with `{how}` (with sudo "
                              "where the configuration is root's)") from None
    if path.parent != Path(os.environ.get("CREDENTIALS_DIRECTORY", "/nonexistent")) \
            and stat.S_IMODE(st.st_mode) & 0o077:
        raise CredentialError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                              f"chmod 600 {path}")
    return raw, path


def load_credential(cfg: Config) -> Credential:
    """Read and classify the credential; refuse a file others can read."""
    raw, path = _read(cfg, CREDENTIAL_NAME, "Anthropic credential", "nanoclaw credential set")
    return parse(raw, str(path))


def load_voice_credential(cfg: Config) -> Credential:
    """The voice API's token, as :func:`load_credential` reads the Anthropic one."""
    raw, path = _read(cfg, VOICE_CREDENTIAL_NAME, "voice API credential", "nanoclaw credential set --voice")
    return parse_voice(raw, str(path))


def store(cfg: Config, secret: str, owner: tuple[int, int] | None = None, name: str = CREDENTIAL_NAME) -> Path:
    """Write the credential file whole (mode 0600, replacing what was there), owned by
    ``owner`` (uid, gid) when given, else by whoever runs this."""
    from nanoclaw.core.safefs import Dir
    (parse_voice if name == VOICE_CREDENTIAL_NAME else parse)(secret)  # refuse what is none before writing
    cfg.config_dir.mkdir(parents=True, exist_ok=True)
    with Dir.open(cfg.config_dir) as conf:
        existed = conf.exists("credentials")
        with conf.sub("credentials", create=True, mode=0o700) as d:
            if not existed:
                os.fchmod(d.fd, 0o700)
            d.write(name, (secret.strip() + "\n").encode(), 0o600)
            if owner is not None:
                os.chown(name, *owner, dir_fd=d.fd, follow_symlinks=False)
    return file_path(cfg, name)


def open_to_service_user(cfg: Config, uid: int, gid: int, name: str = CREDENTIAL_NAME) -> None:
    """The fallback where systemd cannot hand the credential over: the file becomes the
    service user's (0600) and its directory traversable (0711), so the proxy reads it."""
    path = file_path(cfg, name)
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path.parent, 0o711)
