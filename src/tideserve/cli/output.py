"""`-o table|json|yaml` for every listing."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from tideserve.cli.client import dumps_json


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


Column = tuple[str, Callable[[dict[str, Any]], Any]]


def emit(data: Any, fmt: Format, columns: Sequence[Column] | None = None) -> None:
    if fmt is Format.json:
        typer.echo(dumps_json(data))
    elif fmt is Format.yaml:
        typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
    else:
        rows = data if isinstance(data, list) else [data]
        cols = columns or [(k, (lambda row, k=k: row.get(k))) for k in (rows[0] if rows else {})]
        table = Table(box=None, header_style="bold", pad_edge=False)
        for title, _ in cols:
            table.add_column(title.upper())
        for row in rows:
            table.add_row(*("" if (v := get(row)) is None else str(v) for _, get in cols))
        Console(width=200).print(table)


def gib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**30:.1f}Gi"
