"""Reading the deployment files without Docker: the Dockerfile's instructions, the compose file,
the shell scripts' `conscience` command lines, and the real CLI's tree of subcommands and flags.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# Where the image puts deploy/ (Dockerfile: COPY ... /app/deploy/).
IMAGE_DEPLOY_DIR = "/app/deploy/"

# The admin key the fake proxy of conftest.py accepts.
ADMIN_KEY = "admin-key-for-tests"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # where it starts (1-based)


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions: comments dropped, backslash continuations joined (inside a
    continuation, comment lines are dropped too, as Docker does)."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        raise ValueError(f"{path}: the last instruction ends in a line continuation")
    return out


def exec_form(args: str) -> list[str]:
    """A JSON exec form (``["a", "b"]``); anything else is an error here."""
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not an exec form: {args}")
    return value


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each starts with FROM)."""
    groups: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(instruction)
    return groups


def last(stage: list[Instruction], keyword: str) -> Instruction | None:
    found = [i for i in stage if i.keyword == keyword]
    return found[-1] if found else None


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    """The compose file as YAML (anchors and ``<<`` merges resolved by the YAML loader)."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def as_argv(value: Any) -> list[str]:
    """A compose ``command``/``entrypoint``: a list as it is, a string split as a shell would."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {k: v for k, _, v in (item.partition("=") for item in env)}
    return dict(env)


def script_commands(path: Path) -> list[list[str]]:
    """Every simple command line of a shell script, as words: comments dropped, backslash
    continuations joined, ``exec`` and leading ``VAR=value`` assignments removed."""
    commands: list[list[str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # a line shlex cannot read (a case pattern, say) is not a command we check
        for part in _split_on_operators(words):
            while part and (
                part[0] == "exec" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", part[0])
            ):
                part = part[1:]
            if part:
                commands.append(part)
    return commands


def _split_on_operators(words: list[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word in ("&&", "||", ";", "|", "&", "then", "do", "else"):
            parts.append([])
        else:
            parts[-1].append(word)
    return parts


def conscience_commands(path: Path) -> list[list[str]]:
    """The arguments of every ``conscience ...`` command in a shell script."""
    return [words[1:] for words in script_commands(path) if words[0] == "conscience"]


def doc_conscience_commands(path: Path = DEPLOY_DOC) -> list[list[str]]:
    """The arguments of every ``conscience ...`` line inside the doc's fenced code blocks."""
    found: list[list[str]] = []
    fenced = False
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.strip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if not fenced:
            continue
        line = raw.strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        line = line.removeprefix("$ ")
        if line.startswith("conscience "):
            found.append(shlex.split(line, comments=True)[1:])
    return found


def image_invocations() -> list[tuple[str, list[str]]]:
    """Every ``conscience`` argv that the image runs: the Dockerfile's default, each compose
    service built from the Dockerfile (through the image's entrypoint or a deploy/ script that
    passes its arguments on as ``"$@"``), and the scripts' own command lines.

    Returns ``(where, argv)`` pairs; argv starts with the subcommand.
    """
    runtime = stages(dockerfile_instructions())[-1]
    entrypoint_ins, cmd_ins = last(runtime, "ENTRYPOINT"), last(runtime, "CMD")
    image_entrypoint = exec_form(entrypoint_ins.args) if entrypoint_ins else []
    image_cmd = exec_form(cmd_ins.args) if cmd_ins else []

    found: list[tuple[str, list[str]]] = []
    if image_entrypoint == ["conscience"]:
        found.append(("Dockerfile ENTRYPOINT + CMD", image_cmd))

    for name, service in load_compose()["services"].items():
        if "build" not in service:
            continue  # not our image
        entrypoint = as_argv(service["entrypoint"]) if "entrypoint" in service else None
        command = as_argv(service["command"]) if "command" in service else None
        if entrypoint is None:
            entrypoint, command = image_entrypoint, image_cmd if command is None else command
        command = command or []
        where = f"docker-compose.yml service {name}"
        if entrypoint == ["conscience"]:
            found.append((where, command))
            continue
        script = entrypoint[-1]
        if not script.startswith(IMAGE_DEPLOY_DIR):
            raise ValueError(f"{where}: entrypoint {entrypoint} is neither conscience nor deploy/")
        for argv in conscience_commands(DEPLOY / script.removeprefix(IMAGE_DEPLOY_DIR)):
            expanded = [x for word in argv for x in (command if word == "$@" else [word])]
            found.append((f"{where} via {script}", expanded))

    for script in sorted(DEPLOY.glob("*.sh")):
        for argv in conscience_commands(script):
            if "$@" not in argv:
                found.append((f"deploy/{script.name}", argv))
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def resolve(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[list[str], argparse.ArgumentParser, list[str]]:
    """Follow argv's subcommands down the parser: ``(path, leaf parser, the rest of argv)``.

    Raises LookupError naming the missing subcommand and what exists instead.
    """
    path: list[str] = []
    rest = list(argv)
    while choices := subcommands(parser):
        if not rest or rest[0] not in choices:
            given = rest[0] if rest else "(nothing)"
            where = " ".join(["conscience", *path])
            raise LookupError(f"`{where}` has no subcommand {given!r}; it has {sorted(choices)}")
        path.append(rest.pop(0))
        parser = choices[path[-1]]
    return path, parser, rest


def flags(argv: list[str]) -> list[str]:
    """The long options an argv uses (``--name`` of ``--name=value`` too)."""
    return [word.split("=", 1)[0] for word in argv if word.startswith("--")]


def substitute_variables(argv: list[str]) -> list[str]:
    """Shell variables replaced by a placeholder ('1': a path, a URL or a number to argparse),
    so that the real parser can read the argv."""
    return [re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1", word) for word in argv]


def env_names(text: str) -> set[str]:
    """Every CONSCIENCE_* variable name a text mentions."""
    return set(re.findall(r"\bCONSCIENCE_[A-Z0-9_]*[A-Z0-9]\b", text))


def env_example_entries(path: Path = ENV_EXAMPLE) -> dict[str, tuple[str, bool]]:
    """``NAME -> (value, active)`` for each ``NAME=value`` line, commented out or not."""
    entries: dict[str, tuple[str, bool]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", raw.strip())
        if match:
            entries[match.group(2)] = (match.group(3), match.group(1) is None)
    return entries


def compose_variables(path: Path = COMPOSE) -> set[str]:
    """The names of every ``${VAR...}`` interpolated in the compose file."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8")))


def script_env(stub_bin: Path, **extra: str) -> dict[str, str]:
    """A small environment for running a deploy script: the stubs and this Python first."""
    path = os.pathsep.join([str(stub_bin), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return {"PATH": path, "HOME": str(stub_bin.parent), "LC_ALL": "C.UTF-8", **extra}


def app_routes(app: Any) -> dict[str, set[str]]:
    """``path -> methods`` of every route of a FastAPI app, routers included: newer FastAPI
    keeps an included router as one entry of ``app.routes`` (its ``original_router`` holds
    the routes), older FastAPI copies the routes in."""
    found: dict[str, set[str]] = {}

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):
                context = getattr(route, "include_context", None)
                walk(route.original_router.routes, prefix + getattr(context, "prefix", ""))
            elif hasattr(route, "path"):
                methods = getattr(route, "methods", None) or set()
                found.setdefault(prefix + route.path, set()).update(methods)

    walk(list(app.routes), "")
    return found
