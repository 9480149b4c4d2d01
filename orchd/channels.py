"""Where notifications go: Apprise URLs (chat, e-mail, push: Apprise's plugins, not ours), a
webhook (orchd's JSON, signed) and a local command.  Each send either returns or raises
``ChannelError`` with one line saying why, within its timeout: the dispatcher records that line
as the attempt's outcome.

Webhook contract (documented in README): ``POST`` of the event JSON, with
``Idempotency-Key`` (the same for every attempt of one message: drop a repeat),
``X-Orchd-Event`` (e.g. FAILED) and, with a secret, ``X-Orchd-Signature-256: sha256=HEX``, the
HMAC-SHA256 of the body under the secret.  Any 2xx is delivered; anything else is retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchd import __version__

SIGNATURE_HEADER = "X-Orchd-Signature-256"


class ChannelError(Exception):
    """A message was not delivered; the text is one line for the delivery log."""


def signature(secret: str, body: bytes) -> str:
    """The value of ``X-Orchd-Signature-256`` for ``body``: what a receiver recomputes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def read_secret(where: str, env: Mapping[str, str]) -> str:
    """The contents of a file, or of a systemd credential when ``where`` has no slash
    ($CREDENTIALS_DIRECTORY/NAME, set by LoadCredential= in the unit), stripped."""
    if "/" in where:
        path = Path(where)
    elif env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / where
    else:
        raise ChannelError(f"credential {where!r}: no $CREDENTIALS_DIRECTORY (not started by systemd)")
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ChannelError(f"cannot read {path}: {exc.strerror}") from None


def url_lines(text: str) -> list[str]:
    """Apprise URLs of a url_file: one a line; blank lines and # comments skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:limit]


def post_webhook(url: str, payload: Mapping[str, Any], key: str, secret: str, timeout: float) -> None:
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"orchd/{__version__}",
        "Idempotency-Key": key,
        "X-Orchd-Event": str(payload.get("event", "")),
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        detail = _first_line(exc.read(2048).decode("utf-8", "replace"))
        raise ChannelError(f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ChannelError(f"cannot reach the webhook: {reason}") from None


def run_command(argv: list[str], payload: Mapping[str, Any], key: str, timeout: float) -> None:
    """Run ``argv`` with the event JSON on stdin and in ORCHD_EVENT (and ORCHD_IDEMPOTENCY_KEY);
    exit status 0 is delivered.  Killed at the timeout."""
    text = json.dumps(payload, sort_keys=True)
    env = {**os.environ, "ORCHD_EVENT": text, "ORCHD_IDEMPOTENCY_KEY": key}
    try:
        done = subprocess.run(
            argv, input=text.encode(), env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ChannelError(f"{argv[0]}: killed after {timeout:g}s") from None
    except OSError as exc:
        raise ChannelError(f"{argv[0]}: cannot start: {exc.strerror}") from None
    if done.returncode != 0:
        detail = _first_line(
            done.stderr.decode("utf-8", "replace")[-2000:].splitlines()[-1] if done.stderr else ""
        )
        raise ChannelError(
            f"{argv[0]} exited with status {done.returncode}" + (f": {detail}" if detail else "")
        )


def with_timeouts(url: str, timeout: float) -> str:
    """An Apprise URL with its connect and read timeouts (cto, rto) set to ours unless given."""
    sep = "&" if "?" in url else "?"
    extra = [f"{arg}={timeout:g}" for arg in ("cto", "rto") if f"{arg}=" not in url]
    return url + sep + "&".join(extra) if extra else url


def send_apprise(url: str, title: str, body: str, timeout: float) -> None:
    import apprise  # half a second of plugins: only in the process that sends

    sender = apprise.Apprise()
    if not sender.add(with_timeouts(url, timeout)):
        raise ChannelError("Apprise does not know this URL")
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:  # type: ignore[no-untyped-call]
        ok = sender.notify(title=title, body=body)
    if not ok:
        said = [line for line in captured.getvalue().splitlines() if line.strip()]
        raise ChannelError(_first_line(said[-1]) if said else "Apprise could not send the message")
