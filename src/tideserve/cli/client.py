"""How the CLI reaches the platform: URL from the running platform's pid file (or TIDESERVE_URL), key
from admin.key (or TIDESERVE_API_KEY). Errors print the API's message and exit non-zero."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import typer

from tideserve.home import default_home, read_running


class Client:
    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or default_home()).expanduser()
        url = os.environ.get("TIDESERVE_URL")
        if not url:
            run = read_running(self.home)
            if run is None:
                fail(
                    f"tideserve is not running on {self.home}: "
                    "start it with `tideserve up` (or set TIDESERVE_URL)"
                )
            url = run.url
        key = os.environ.get("TIDESERVE_API_KEY")
        if not key:
            try:
                key = (self.home / "admin.key").read_text().strip()
            except OSError:
                fail(f"no API key: {self.home / 'admin.key'} is missing; set TIDESERVE_API_KEY")
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600.0, trust_env=False
        )

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            fail(f"cannot reach {self.http.base_url}: {e}")
        if r.status_code >= 400:
            _fail_with(r)
        if r.status_code == 204 or not r.content:
            return None
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return r.text

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return (
            self.request("POST", path, json=body, **kw)
            if body is not None
            else self.request("POST", path, **kw)
        )

    def send_document(self, method: str, path: str, text: str) -> Any:
        """A service document as the user wrote it (YAML or JSON); the server parses and locates errors."""
        return self.request(method, path, content=text.encode(), headers={"content-type": "application/yaml"})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def stream_text(self, path: str, **kw: Any) -> Iterator[str]:
        """A GET whose text arrives as the server writes it, for as long as it does (no read timeout)."""
        try:
            with self.http.stream("GET", path, timeout=httpx.Timeout(10.0, read=None), **kw) as r:
                if r.status_code >= 400:
                    r.read()
                    _fail_with(r)
                yield from r.iter_text()
        except httpx.HTTPError as e:
            fail(f"cannot reach {self.http.base_url}: {e}")


def _fail_with(r: httpx.Response) -> None:
    try:
        err = r.json()["error"]
        msg = err["message"]
        extra = [f"  {d['loc']}: {d['msg']}" for d in err.get("details", [])[1:]]
    except (ValueError, KeyError, TypeError):
        msg, extra = r.text, []
    fail("\n".join([f"error ({r.status_code}): {msg}", *extra]))


def fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
