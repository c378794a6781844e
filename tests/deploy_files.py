"""Readers for the deployment files (Dockerfile, .dockerignore, docker-compose.yml, deploy/nginx.conf).

No Docker engine runs where the tests do, so the tests read these files the way Docker, Compose and nginx would,
closely enough to check what matters: stages, environment, commands, ports, mounts and limits.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

# ---- Dockerfile -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    args: str  # the rest of the (joined) line
    line: int  # 1-based line where the instruction starts


@dataclass
class Stage:
    name: str | None
    base: str  # with global ARG defaults substituted
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """The ENV variables this stage sets, later ones winning (values unexpanded, e.g. `$PATH` stays)."""
        variables: dict[str, str] = {}
        for item in self.all("ENV"):
            variables.update(parse_env(item.args))
        return variables


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; stages: {[stage.name for stage in self.stages]}")


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations and drop comments, as Docker does (comments inside continuations too)."""
    lines: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        lines.append((start, " ".join(part for part in parts if part)))
        parts = []
    if parts:
        lines.append((start, " ".join(parts)))
    return lines


def _substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [word for word in args.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name=name, base=_substitute(words[0], global_args)))
        elif not stages:
            if keyword == "ARG":
                key, _, default = args.partition("=")
                global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return Dockerfile(global_args, stages)


def read_dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def parse_env(args: str) -> dict[str, str]:
    """`ENV A=1 B="two words"`, or the legacy `ENV A value with spaces`."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def exec_form(args: str) -> list[str] | None:
    """The argument list of an exec-form (JSON array) command, or None for shell form."""
    if not args.lstrip().startswith("["):
        return None
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise ValueError(f"not a JSON array of strings: {args}")
    return value


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]
    command: list[str] | None  # exec form
    shell: str | None  # shell form


def parse_healthcheck(args: str) -> Healthcheck:
    options: dict[str, str] = {}
    rest = args.strip()
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        rest = rest.strip()
    keyword, _, command = rest.partition(" ")
    if keyword.upper() != "CMD":
        raise ValueError(f"HEALTHCHECK without CMD: {args}")
    argv = exec_form(command)
    return Healthcheck(options, argv, None if argv is not None else command.strip())


def copy_instructions(stage: Stage) -> list[tuple[list[str], str, dict[str, str]]]:
    """(sources, destination, flags) of each COPY/ADD in the stage."""
    result = []
    for item in stage.all("COPY") + stage.all("ADD"):
        words = exec_form(item.args) or item.args.split()
        flags = dict(word[2:].partition("=")[::2] for word in words if word.startswith("--"))
        paths = [word for word in words if not word.startswith("--")]
        result.append((paths[:-1], paths[-1], flags))
    return result


def shell_commands(script: str) -> list[list[str]]:
    """A RUN line split into its simple commands at `&&`, `||` and `;`, each as words."""
    commands: list[list[str]] = [[]]
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def install_arguments(stage: Stage, tool: str) -> list[str]:
    """Every argument (not option) given to `<tool> install` in the stage's RUN lines: `pip` or `apt-get`."""
    arguments: list[str] = []
    for item in stage.all("RUN"):
        for command in shell_commands(item.args):
            names = [Path(word).name for word in command]
            for index, name in enumerate(names[:-1]):
                if name.startswith(tool) and names[index + 1] == "install":
                    arguments += [word for word in command[index + 2 :] if not word.startswith("-")]
    return arguments


# ---- .dockerignore ----------------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match plus `**`, as Docker's pattern matcher reads .dockerignore lines."""
    out, index = "", 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            if pattern.startswith("/", index):
                out = out[:-2] + "(?:.*/)?"
                index += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char) if char not in "[]" else char)
        index += 1
    return re.compile(out + r"\Z")


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line, in order."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        cleaned = line.lstrip("!").strip().strip("/")
        patterns.append((exception, _glob_regex(cleaned)))
    return patterns


def is_ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `path` (relative, with /) out of the build context: the last matching line wins, and a
    line matches a path when it matches the path or one of its parent folders."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    ignored = False
    for exception, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not exception
    return ignored


# ---- docker-compose.yml -----------------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@dataclass(frozen=True)
class PortMapping:
    host: int | None
    container: int


def parse_ports(entries: list[Any]) -> list[PortMapping]:
    """Short ("8000:8000", "127.0.0.1:8000:8000/tcp", "8000") and long ({target, published}) syntax."""
    mappings = []
    for entry in entries:
        if isinstance(entry, dict):
            published = entry.get("published")
            mappings.append(PortMapping(int(published) if published else None, int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        container = int(parts[-1])
        host = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
        mappings.append(PortMapping(host, container))
    return mappings


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """`environment:` as a mapping or a list of KEY=VALUE, values as strings."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {str(key): _scalar(value) for key, value in environment.items()}


def _scalar(value: object) -> str:
    """A YAML scalar as Compose passes it to the container: `true` stays "true", null becomes ""."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def healthcheck_argv(test: list[str] | str) -> list[str]:
    """A compose healthcheck `test` as the argument list Docker runs."""
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    if test[0] == "CMD":
        return list(test[1:])
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    raise ValueError(f"unsupported healthcheck test {test}")


# ---- nginx.conf -------------------------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str) -> list[Directive]:
        """Directives called `name` anywhere below this one."""
        found = []
        for child in self.block or []:
            if child.name == name:
                found.append(child)
            found += child.find(name)
        return found


def parse_nginx(text: str) -> Directive:
    """nginx's configuration syntax: `name args;` and `name args { ... }`, # comments, quoted strings."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{};]|[^\s{};]+', text)
    root = Directive("main", [], [])
    stack = [root]
    words: list[str] = []
    for token in tokens:
        if token.startswith("#"):
            continue
        if token == ";":
            stack[-1].block.append(Directive(words[0], words[1:]))  # type: ignore[union-attr]
            words = []
        elif token == "{":
            block = Directive(words[0], words[1:], [])
            stack[-1].block.append(block)  # type: ignore[union-attr]
            stack.append(block)
            words = []
        elif token == "}":
            if words or len(stack) == 1:
                raise ValueError("unbalanced braces or a directive without ';'")
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    if words or len(stack) != 1:
        raise ValueError("unterminated directive or block")
    return root


def nginx_size(value: str) -> float:
    """An nginx size (`10m`, `512k`, `1g`, bytes) in bytes; 0 means unlimited for client_max_body_size."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    if not match:
        raise ValueError(f"not an nginx size: {value}")
    number = int(match.group(1))
    return float("inf") if number == 0 else number * 1024 ** " kmg".index((match.group(2) or " ").lower())


def duration_seconds(value: str) -> float:
    """An nginx or Docker duration (`60s`, `1m30s`, `500ms`, plain seconds) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h|)", value):
        total += int(number) * units[unit]
    return total
