"""The web console: a single page served at `/`, its assets under `/console/`. Everything it shows
comes from the same `/api/v1/*` and `/v1/*` calls the CLI makes, with the key the user logs in with;
no asset comes from a CDN (the vendored libraries and their licenses are in static/vendor/)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(str(files("tideserve.console") / "static"))


def mount(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        # The page itself holds no data: it asks for a key, then calls the API with it.
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/console", StaticFiles(directory=STATIC), name="console")
