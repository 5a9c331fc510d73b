"""docker/Dockerfile and docker/compose.yaml stay consistent with the project.

Docker cannot run here, so these check what can go stale without anyone noticing: the compose
file parses, every PAGERAG_* variable the files set is a real setting, the Dockerfile copies
paths that exist and runs a command the CLI has, and the ports and health checks agree.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from rag.cli import app
from rag.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
SETTINGS = {f"PAGERAG_{name.upper()}" for name in Settings.model_fields}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text()
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """A JSON exec-form argument list (["a", "b"]) or a shell-form command split into words."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def env_vars() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions():
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_app_and_pinned_qdrant(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"app", "qdrant"}
    image = services["qdrant"]["image"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", image), f"pin an exact version: {image}"
    assert services["app"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert (COMPOSE.parent / services["app"]["build"]["context"] / "docker" / "Dockerfile").exists()


def test_compose_wires_the_app_to_qdrant(compose: dict[str, Any]) -> None:
    app_service = compose["services"]["app"]
    env = app_service["environment"]
    url = env["PAGERAG_QDRANT_URL"]
    assert url.split("://", 1)[1].split(":")[0] == "qdrant"  # the service name resolves
    assert "qdrant" in app_service["depends_on"]
    qdrant_ports = [p.split(":")[-1] for p in compose["services"]["qdrant"]["ports"]]
    assert url.rsplit(":", 1)[1] in qdrant_ports


def test_every_variable_compose_sets_is_a_setting(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        unknown = {k for k in keys if k.startswith("PAGERAG_")} - SETTINGS
        assert not unknown, f"service {name} sets unknown settings {unknown}"
    Settings(
        _env_file=None,
        **{  # type: ignore[arg-type]
            k.removeprefix("PAGERAG_").lower(): v
            for k, v in compose["services"]["app"]["environment"].items()
        },
    )  # and their values validate


def test_compose_reserves_a_gpu_and_declares_volumes(compose: dict[str, Any]) -> None:
    devices = compose["services"]["app"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    named = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    declared = set(compose.get("volumes") or {})
    assert {n for n in named if not n.startswith((".", "/"))} <= declared


def test_dockerfile_copies_existing_paths() -> None:
    copies = [args for word, args in instructions() if word == "COPY" and "--from" not in args]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the project"


def test_dockerfile_runs_a_real_cli_command() -> None:
    cmd = exec_form(next(args for word, args in instructions() if word == "CMD"))
    assert cmd[0] == "pagerag"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'pagerag = "rag.cli:app"' in pyproject  # the console script the image puts on PATH
    group = typer.main.get_command(app)
    command = group.commands[cmd[1]]  # type: ignore[attr-defined]
    options = {opt for p in command.params for opt in p.opts}
    flags = [word for word in cmd[2:] if word.startswith("--")]
    assert set(flags) <= options, f"unknown options {set(flags) - options}"


def test_dockerfile_ports_health_and_user() -> None:
    words = dict(instructions())
    cmd = exec_form(words["CMD"])
    port = cmd[cmd.index("--port") + 1]
    assert words["EXPOSE"].split()[0] == port
    health = words["HEALTHCHECK"]
    assert f"127.0.0.1:{port}/healthz" in health
    api = (ROOT / "rag" / "server" / "app.py").read_text()
    assert re.search(r'\.get\(\s*"/healthz"', api), "the API no longer serves /healthz"
    compose_ports = yaml.safe_load(COMPOSE.read_text())["services"]["app"]["ports"]
    assert any(p.split(":")[-1] == port for p in compose_ports)
    users = [args for word, args in instructions() if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"


def test_dockerfile_volumes_match_its_settings() -> None:
    env = env_vars()
    unknown = {k for k in env if k.startswith("PAGERAG_")} - SETTINGS
    assert not unknown, f"the Dockerfile sets unknown settings {unknown}"
    volumes = set(exec_form(dict(instructions())["VOLUME"]))
    assert env["PAGERAG_DATA_DIR"] in volumes  # index, images and manifest survive the container
    assert env["HF_HOME"] in volumes  # the model cache too


def test_deploy_doc_names_only_real_settings() -> None:
    doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    named = set(re.findall(r"PAGERAG_[A-Z0-9_]+", doc))
    assert named, "docs/DEPLOY.md lists no settings"
    assert not named - SETTINGS, f"docs/DEPLOY.md names unknown settings {named - SETTINGS}"
