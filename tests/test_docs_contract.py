"""The READMEs' commands, flags, defaults, signatures and paths against the code.

A doc that names a flag the parser lacks, a default the code changed, a client
signature that moved or a file that was renamed fails here, instead of failing a
reader. The docs are read as text; the code is asked through its own objects
(the argparse parsers, `inspect.signature`, dataclass fields, the metrics registry).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SERVER_README = ROOT / "server" / "README.md"
CLIENTS_README = ROOT / "clients" / "README.md"

FLAG = re.compile(r"(?<![\w-])--?([a-z][a-z0-9-]*)")


def _commands() -> dict[str, argparse.ArgumentParser]:
    """'serve', 'data tafeng', ... -> the parser of that (sub)command."""
    from xsell.cli import build_parser

    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    key = f"{prefix} {name}".strip()
                    out[key] = sub
                    walk(sub, key)

    walk(build_parser(), "")
    return out


COMMANDS = _commands()


def _options(command: str) -> dict[str, argparse.Action]:
    return {o: a for a in COMMANDS[command]._actions for o in a.option_strings}


def _command_of(words: list[str]) -> str | None:
    """The longest known command at the start of `xsell WORDS...`."""
    for n in (2, 1):
        key = " ".join(words[:n])
        if key in COMMANDS:
            return key
    return None


def _xsell_invocations(text: str) -> list[tuple[str, str]]:
    """(command, the rest of the invocation) for every `xsell ...` the doc shows, in
    backticks or on a code-block line."""
    spans = re.findall(r"`(xsell [^`]+)`", text)
    spans += [m.strip().removeprefix("$ ") for m in re.findall(r"^\s*(?:\$ )?(xsell [^\n]+)$", text, re.MULTILINE)]
    out = []
    for span in spans:
        words = span.split()[1:]
        command = _command_of(words)
        if command is not None:
            out.append((command, " ".join(words[len(command.split()) :])))
    return out


@pytest.mark.parametrize("doc", [README, SERVER_README, CLIENTS_README], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_of_a_documented_xsell_command_exists(doc):
    found = _xsell_invocations(doc.read_text())
    assert found, f"no xsell invocation found in {doc}"
    missing = [
        (command, f"--{flag}")
        for command, rest in found
        for flag in FLAG.findall(rest)
        if f"--{flag}" not in _options(command) and f"-{flag}" not in _options(command)
    ]
    assert not missing, f"{doc.name} shows flags the parser does not have: {missing}"


def _bracketed_defaults(text: str) -> list[tuple[str, str]]:
    """`[--flag VALUE]` pairs whose VALUE is a number, not a placeholder (N, DIR, G ...)."""
    return re.findall(r"\[(--[a-z][a-z-]*) ([0-9]+(?:\.[0-9]+)?)\]", text)


def _default(command: str, flag: str):
    from xsell.server.interceptor import DEFAULT_MAX_IN_FLIGHT

    action = _options(command)[flag]
    if (command, flag) == ("serve", "--max-in-flight") and action.default is None:
        return DEFAULT_MAX_IN_FLIGHT  # None = max(64, 2 x threads), 64 at the default threads
    if (command, flag) == ("train", "--label-windows") and action.default is None:
        from xsell.ranking.train import TrainConfig

        return TrainConfig().label_windows  # None = TrainConfig's
    return action.default


def test_readme_commands_table_defaults_are_the_parsers():
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `xsell ")]
    assert len(rows) >= 9, rows
    checked = 0
    for row in rows:
        span = row.split("`")[1]
        command = _command_of(span.split()[1:])
        assert command is not None, row
        for flag, value in _bracketed_defaults(span):
            assert float(_default(command, flag)) == float(value), f"{row}: {flag} {value}"
            checked += 1
    assert checked >= 2  # --label-days 28, --label-windows 2


def _server_synopsis() -> str:
    text = SERVER_README.read_text()
    block = text.split("\n\n")[1]  # the indented `xsell serve ...` block under the title
    assert block.lstrip().startswith("xsell serve"), block
    return block


def test_server_readme_synopsis_lists_every_serve_flag_with_its_default():
    synopsis = _server_synopsis()
    shown = {f"--{f}" for f in FLAG.findall(synopsis)}
    options = {o for o in _options("serve") if o.startswith("--") and o != "--help"}
    assert shown == options, (
        f"in the parser, not the synopsis: {sorted(options - shown)}; "
        f"in the synopsis, not the parser: {sorted(shown - options)}"
    )
    for flag, value in _bracketed_defaults(synopsis):
        assert float(_default("serve", flag)) == float(value), f"{flag} {value}"
    assert _options("serve")["--host"].default in synopsis
    choices = re.search(r"--cpu-policy ([a-z|]+)\]", synopsis).group(1).split("|")
    assert choices == list(_options("serve")["--cpu-policy"].choices)
    assert choices[0] == _options("serve")["--cpu-policy"].default  # the first one shown is the default


def _prose(text: str) -> str:
    """The text without its fenced code blocks (their ``` would pair with inline backticks)."""
    return re.sub(r"^```.*?^```$", "", text, flags=re.MULTILINE | re.DOTALL)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else None]


@pytest.mark.parametrize(
    "heading, command",
    [("## `xsell recommend`", "recommend"), ("## Load harness (`xsell loadtest`)", "loadtest")],
)
def test_clients_readme_flags_of_a_section_exist(heading, command):
    """Bare flags in backticks (`--tls-ca`, `--price-min/--price-max`) belong to the
    section's command; spans that start with another program are left out."""
    section = _prose(_section(CLIENTS_README.read_text(), heading))
    spans = [s for s in re.findall(r"`([^`]+)`", section) if s.startswith("--")]
    flags = {f"--{f}" for s in spans for f in FLAG.findall(s)}
    assert len(flags) >= 5, flags
    missing = sorted(flags - set(_options(command)))
    assert not missing, f"{heading}: not options of xsell {command}: {missing}"


def _node_options() -> set[str]:
    src = (ROOT / "clients" / "node" / "recommend.js").read_text()
    block = src[src.index("parseArgs({") : src.index("}));", src.index("parseArgs({"))]
    return {m for m in re.findall(r"^\s*'?([a-z][a-z-]*)'?: \{ type:", block, re.MULTILINE)}


def _go_options() -> set[str]:
    src = (ROOT / "clients" / "go" / "xsell-client" / "main.go").read_text()
    return set(re.findall(r'flag\.(?:String|Int|Uint|Bool|Float64|Duration)\("([a-z-]+)"', src))


def test_node_and_go_take_the_flags_the_clients_readme_shows():
    text = CLIENTS_README.read_text()
    node, go = _node_options(), _go_options()
    assert {"address", "cart", "tls-ca"} <= node and {"address", "cart", "tls-ca"} <= go
    node_lines = re.findall(r"^node recommend\.js (.+)$", text, re.MULTILINE)
    go_lines = re.findall(r"/tmp/xsell-go-client (.+)$", text, re.MULTILINE)
    assert node_lines and go_lines
    # lines continued with a backslash go on on the next line
    cont = re.findall(r"\\\n\s+(--[^\n]+)", text)
    for line in node_lines + cont:
        assert set(FLAG.findall(line)) <= node, line
    for line in go_lines:
        assert set(FLAG.findall(line)) <= go, line
    table = _section(text, "## TLS, mutual TLS and tokens in Node and Go")
    table_flags = set(re.findall(r"^\| `--([a-z-]+)", table, re.MULTILINE)) | set(
        re.findall(r"^\| `--[a-z-]+ FILE` `--([a-z-]+)", table, re.MULTILINE)
    )
    assert {"tls-ca", "tls-cert", "tls-key", "tls-server-name", "tls", "token"} <= table_flags
    assert table_flags <= node and table_flags <= go


# --- the Python client's documented surface -------------------------------------------

_NO_DEFAULT = object()


def _doc_params(text: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for part in (p.strip() for p in text.split(",")):
        if "=" in part:
            name, value = part.split("=", 1)
            out.append((name.strip(), ... if value.strip() == "..." else ast.literal_eval(value.strip())))
        else:
            out.append((part, _NO_DEFAULT))
    return out


def _code_params(fn) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    star = False
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self":
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            out.append(("*", _NO_DEFAULT))
            star = True
        out.append((p.name, _NO_DEFAULT if p.default is p.empty else p.default))
    return out


def _documented_calls(text: str) -> dict[str, str]:
    """`Name(params)` / `.method(params)` spans (possibly over a line break) -> params."""
    out = {}
    for name, params in re.findall(r"`(?:\w+=)?(\.?[A-Za-z_]\w*)\(([^`]*)\)(?: -> [^`()]*)?`", _prose(text)):
        out.setdefault(name, " ".join(params.split()))
    return out


def test_clients_readme_python_signatures_are_the_code():
    import xsell.clients as c

    calls = _documented_calls(CLIENTS_README.read_text())
    methods = {
        "XsellClient": c.XsellClient.__init__,
        ".recommend": c.XsellClient.recommend,
        ".recommend_batch": c.XsellClient.recommend_batch,
        ".model_info": c.XsellClient.model_info,
        ".reload": c.XsellClient.reload,
        "Backoff": c.Backoff,
        "TlsOptions": c.TlsOptions,
    }
    for name, fn in methods.items():
        assert name in calls, f"clients/README.md no longer shows {name}(...)"
        doc, code = _doc_params(calls[name]), _code_params(fn)
        assert [n for n, _ in doc] == [n for n, _ in code], f"{name}: {doc} vs {code}"
        for (n, d), (_, k) in zip(doc, code, strict=True):
            if d is not ...:
                assert d == k, f"{name}({n}=...): README {d!r}, code {k!r}"
    # "the same, async": the asyncio client takes the same arguments
    for name in ("__init__", "recommend", "recommend_batch", "model_info", "reload"):
        assert _code_params(getattr(c.AsyncXsellClient, name)) == _code_params(getattr(c.XsellClient, name))
    for name in ("Recommendations", "RecommendedItem", "Reason"):
        fields = [f.name for f in dataclasses.fields(getattr(c, name))]
        assert [n for n, _ in _doc_params(calls[name])] == fields, name
    error = c.XsellRpcError("Recommend", __import__("grpc").StatusCode.INVALID_ARGUMENT, "x", field="f")
    for attr in re.findall(r"\.(\w+)", calls["XsellRpcError"]):
        assert hasattr(error, attr), attr
    listed = set(re.findall(r"`(\w+)", _section(CLIENTS_README.read_text(), "**Surface**")))
    assert set(c.__all__) <= listed, sorted(set(c.__all__) - listed)


def test_clients_readme_server_default_limit():
    from xsell.ranking.types import DEFAULT_LIMIT

    text = CLIENTS_README.read_text()
    assert f"`limit=0`: the server default ({DEFAULT_LIMIT})" in text
    assert f"items per list (0 = server default, {DEFAULT_LIMIT})" in _options("recommend")["--limit"].help


# --- the server README's metrics and the files every doc points at ----------------------


def test_server_readme_metric_names_exist():
    from xsell.server.metrics import ServerMetrics

    families = set()
    for family in ServerMetrics().registry.collect():
        families.add(family.name + ("_total" if family.type == "counter" else ""))
    section = _section(SERVER_README.read_text(), "**Metrics**")
    section = section[: section.index("**Logs.**")]
    documented = set(re.findall(r"`(xsell_[a-z_]+)", section))
    assert len(documented) >= 9
    assert documented == families, (sorted(documented - families), sorted(families - documented))


_REPO_DIRS = ("tests", "clients", "server", "ranking", "retrieval", "src", "benchmarks", "protos",
              "protos-released", "tools", "fuzz", ".ci")  # fmt: skip


@pytest.mark.parametrize("doc", [README, SERVER_README, CLIENTS_README], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_a_doc_names_exists(doc):
    text = doc.read_text()
    paths = set()
    for span in re.findall(r"`([^`\s]+)`", _prose(text)) + re.findall(r"\]\(([^)\s]+)\)", text):
        span = span.rstrip(".,:;")
        # node_modules is made by `npm ci`, not kept in the repository
        if span.split("/")[0] in _REPO_DIRS and "/" in span and "*" not in span and "node_modules" not in span:
            paths.add(span)
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists() and not (doc.parent / p).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
