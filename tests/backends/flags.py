"""An argparse parser rebuilt from an engine's flag fixture (fixtures/<engine>-<version>.flags.json,
dumped from the engine's real parser by fixtures/dump_flags.py), and the checks a command line must
pass against it: every flag known under its exact name, a value where the flag takes one, none where
it does not, and each value of the type and among the choices the engine declares."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class EngineFlags:
    engine: str
    version: str
    parser: argparse.ArgumentParser
    options: dict[str, dict[str, Any]]  # each option string (--flag) -> the fixture's entry
    positionals: list[str]  # dests


def load(engine: str, version: str) -> EngineFlags:
    doc = json.loads((FIXTURES / f"{engine}-{version}.flags.json").read_text())
    assert (doc["engine"], doc["version"]) == (engine, version)
    # No abbreviations: the engines may accept them, but an adapter must spell flags out.
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for pos in doc["positionals"]:
        parser.add_argument(pos["dest"], nargs=pos["nargs"])
    options = {}
    for opt in doc["options"]:
        if opt["takes_value"]:
            parser.add_argument(*opt["flags"], dest=opt["dest"], nargs=opt["nargs"])
        else:
            parser.add_argument(*opt["flags"], dest=opt["dest"], action="store_true")
        options |= dict.fromkeys(opt["flags"], opt)
    return EngineFlags(engine, version, parser, options, [p["dest"] for p in doc["positionals"]])


def _check_value(opt: dict[str, Any], value: str) -> None:
    flag = opt["flags"][0]
    if opt["choices"] is not None:
        assert value in opt["choices"], f"{flag} {value!r}: not one of {opt['choices']}"
    if opt["type"] == "int":
        int(value)
    elif opt["type"] == "float":
        float(value)


def parse(flags: EngineFlags, argv: list[str]) -> argparse.Namespace:
    """Parse as the engine would; AssertionError (or argparse.ArgumentError) on what it would refuse."""
    namespace, unknown = flags.parser.parse_known_args(argv)
    assert not unknown, f"{flags.engine} {flags.version} does not know {unknown}"
    for i, arg in enumerate(argv):
        opt = flags.options.get(arg)
        if opt is not None and opt["takes_value"]:
            _check_value(opt, argv[i + 1])  # argparse made sure there is one
    return namespace
