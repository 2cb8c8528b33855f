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
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nanoclaw.core.config import Config

CREDENTIAL_NAME = "anthropic-credential"
OAUTH_BETA = "oauth-2025-04-20"


class CredentialError(Exception):
    """No usable credential; the text says where one is expected."""


@dataclass(frozen=True)
class Credential:
    kind: str  # "api_key" or "oauth"
    secret: str

    def headers(self) -> list[tuple[str, str]]:
        if self.kind == "oauth":
            return [("authorization", f"Bearer {self.secret}")]
        return [("x-api-key", self.secret)]

    def __repr__(self) -> str:  # never let a secret reach a log line by accident
        return f"Credential(kind={self.kind!r}, secret=<{len(self.secret)} chars>)"

    __str__ = __repr__


def file_path(cfg: Config) -> Path:
    """Where the owner keeps it (what ``LoadCredential=`` copies from)."""
    return cfg.config_dir / "credentials" / CREDENTIAL_NAME


def credential_path(cfg: Config) -> Path:
    """systemd's ``LoadCredential=`` copy when it is there and readable, else the config file."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        try:
            if (Path(creds) / CREDENTIAL_NAME).exists():
                return Path(creds) / CREDENTIAL_NAME
        except OSError:  # some container hosts make the credentials dir unreadable to User=
            pass
    return file_path(cfg)


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


def load_credential(cfg: Config) -> Credential:
    """Read and classify the credential; refuse a file others can read."""
    path = credential_path(cfg)
    try:
        st = path.stat()
        raw = path.read_text()
    except OSError as exc:
        raise CredentialError(f"no Anthropic credential readable at {path} ({exc.strerror}): "
                              "set it with `nanoclaw credential set` (with sudo where the configuration is "
                              "root's)") from None
    if path.parent != Path(os.environ.get("CREDENTIALS_DIRECTORY", "/nonexistent")) \
            and stat.S_IMODE(st.st_mode) & 0o077:
        raise CredentialError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                              f"chmod 600 {path}")
    return parse(raw, str(path))


def store(cfg: Config, secret: str, owner: tuple[int, int] | None = None) -> Path:
    """Write the credential file whole (mode 0600, replacing what was there), owned by
    ``owner`` (uid, gid) when given, else by whoever runs this."""
    from nanoclaw.core.safefs import Dir
    parse(secret)  # refuse what is not a credential before anything is written
    cfg.config_dir.mkdir(parents=True, exist_ok=True)
    with Dir.open(cfg.config_dir) as conf:
        existed = conf.exists("credentials")
        with conf.sub("credentials", create=True, mode=0o700) as d:
            if not existed:
                os.fchmod(d.fd, 0o700)
            d.write(CREDENTIAL_NAME, (secret.strip() + "\n").encode(), 0o600)
            if owner is not None:
                os.chown(CREDENTIAL_NAME, *owner, dir_fd=d.fd, follow_symlinks=False)
    return file_path(cfg)


def open_to_service_user(cfg: Config, uid: int, gid: int) -> None:
    """The fallback where systemd cannot hand the credential over: the file becomes the
    service user's (0600) and its directory traversable (0711), so the proxy reads it."""
    path = file_path(cfg)
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path.parent, 0o711)
