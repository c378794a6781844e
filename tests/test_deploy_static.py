"""The Dockerfile, .dockerignore, docker-compose.yml and deploy/nginx.conf, checked statically.

No Docker engine runs where these tests do, so they read the files and compare them with what the service really
is: its settings and their defaults, its routes, its extras in pyproject.toml and the repository's files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from service.api.app import create_app
from service.api.settings import DEFAULT_MODEL, ENV_PREFIX, Settings
from service.core.bundle import ATTRIBUTES_FILE, DECODER_FILE, ENCODER_FILE, LATENT_STATS_FILE, MANIFEST_FILE
from tests.deploy_files import (
    COMPOSE_FILE,
    DOCKERIGNORE,
    REPO_ROOT,
    Directive,
    Dockerfile,
    Stage,
    compose_environment,
    copy_instructions,
    dockerignore_patterns,
    duration_seconds,
    exec_form,
    healthcheck_argv,
    install_arguments,
    is_ignored,
    load_compose,
    nginx_size,
    parse_dockerfile,
    parse_healthcheck,
    parse_nginx,
    parse_ports,
    read_dockerfile,
)

#: Serving image target -> the extra of pyproject.toml it must install, and the one it must never install.
FLAVOURS = {"cpu": ("cpu", "gpu"), "gpu": ("gpu", "cpu")}
#: Serving image target -> the bundle it bakes in: int8 on CPUs (half the CPU per face), float32 on GPUs.
BAKED = {"cpu": DEFAULT_MODEL.with_name("celeba-64-int8"), "gpu": DEFAULT_MODEL}
FORBIDDEN_PACKAGES = ("tensorflow", "tf2onnx", "keras", "tf-keras")
DEFAULT_PORT: int = Settings.model_fields["port"].default
DEFAULT_MAX_BODY: int = Settings.model_fields["max_body_bytes"].default
SETTINGS_VARIABLES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
BUNDLE_FILES = (ENCODER_FILE, DECODER_FILE, LATENT_STATS_FILE, ATTRIBUTES_FILE, MANIFEST_FILE)
FACEVAE_SERVICES = ("facevae", "facevae-gpu", "facevae-replica")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return read_dockerfile()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def app_paths() -> set[str]:
    """The app's routes, from its OpenAPI schema; building the app does not load a model."""
    return set(create_app(Settings(model=REPO_ROOT)).openapi()["paths"])


@pytest.fixture(scope="module")
def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_patterns(DOCKERIGNORE.read_text())


def _builder(dockerfile: Dockerfile, stage: Stage) -> Stage:
    """The stage whose /opt/venv a runtime stage copies (its dependencies are installed there)."""
    builders = [flags["from"] for _, destination, flags in copy_instructions(stage) if "from" in flags]
    assert len(builders) == 1, f"stage {stage.name} should copy its environment from exactly one stage: {builders}"
    return dockerfile.stage(builders[0])


def _extras(argument: str) -> set[str]:
    match = re.search(r"\[([^\]]*)\]$", argument)
    return {extra.strip() for extra in match.group(1).split(",")} if match else set()


def _image_env(dockerfile: Dockerfile, target: str) -> dict[str, str]:
    return dockerfile.stage(target).env()


def _container_port(dockerfile: Dockerfile, service: dict[str, Any]) -> int:
    """The port the service listens on in the container: the compose FACEVAE_PORT, else the image's."""
    image_env = _image_env(dockerfile, service["build"]["target"])
    return int(compose_environment(service).get(f"{ENV_PREFIX}PORT", image_env[f"{ENV_PREFIX}PORT"]))


# ---- Dockerfile ---------------------------------------------------------------------------------------------------


def test_parser_reads_stages_env_and_exec_forms() -> None:
    """The reader the other tests rely on, on a file whose meaning is known."""
    parsed = parse_dockerfile(
        "ARG BASE=python:3.11-slim\n# comment\nFROM ${BASE} AS build\nRUN pip install \\\n    '.[cpu]' && echo ok\n"
        'FROM build AS final\nENV A=1 B="two words" \\\n    C=3\nCMD ["python", "-m", "service"]\n'
    )
    assert [stage.name for stage in parsed.stages] == ["build", "final"]
    assert parsed.stages[0].base == "python:3.11-slim"
    assert install_arguments(parsed.stages[0], "pip") == [".[cpu]"]
    assert parsed.stage("final").env() == {"A": "1", "B": "two words", "C": "3"}
    assert exec_form(parsed.stage("final").all("CMD")[0].args) == ["python", "-m", "service"]
    assert exec_form("python -m service") is None


def test_cpu_and_gpu_targets_exist_and_cpu_is_the_default(dockerfile: Dockerfile) -> None:
    names = [stage.name for stage in dockerfile.stages]
    assert len(names) == len(set(names)), f"duplicate stage names: {names}"
    assert {"cpu", "gpu"} <= set(names)
    # `docker build .` without --target builds the last stage.
    assert names[-1] == "cpu"


def test_base_images(dockerfile: Dockerfile, pyproject: dict[str, Any]) -> None:
    requires_python = SpecifierSet(pyproject["project"]["requires-python"])
    cpu_base = dockerfile.stage("cpu").base
    match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?(?:@sha256:\w+)?", cpu_base)
    assert match, f"the CPU image should be a python slim image, not {cpu_base}"
    assert Version(match.group(1)) in requires_python

    gpu_base = dockerfile.stage("gpu").base
    match = re.fullmatch(r"(?:nvcr\.io/)?nvidia/cuda:(\d+)\.\d+(?:\.\d+)?-cudnn\d*-runtime-ubuntu(\d+\.\d+)", gpu_base)
    assert match, f"the GPU image should be an NVIDIA CUDA cuDNN runtime image, not {gpu_base}"
    # onnxruntime-gpu from PyPI (1.2x..1.31) is built for CUDA 13 with cuDNN 9; another major fails at load time.
    assert int(match.group(1)) == 13
    # Ubuntu 24.04's python3 is 3.12, inside requires-python; 22.04's 3.10 is not.
    assert Version(match.group(2)) >= Version("24.04")


@pytest.mark.parametrize("target", sorted(FLAVOURS))
def test_runtime_stage_copies_a_venv_built_on_the_same_base(dockerfile: Dockerfile, target: str) -> None:
    """A venv links to its interpreter by path, so builder and runtime must share the base image."""
    stage = dockerfile.stage(target)
    builder = _builder(dockerfile, stage)
    assert builder.base == stage.base
    venv_copies = [(sources, destination) for sources, destination, flags in copy_instructions(stage) if flags]
    assert venv_copies == [(["/opt/venv"], "/opt/venv")]
    assert stage.env()["PATH"].startswith("/opt/venv/bin:")
    # Dependencies come only through the builder: nothing is pip-installed into the serving image itself.
    assert install_arguments(stage, "pip") == []


def test_extras_hold_exactly_one_onnxruntime_and_no_tensorflow(pyproject: dict[str, Any]) -> None:
    """What `.[cpu]` and `.[gpu]` pull in, which the image tests below rely on."""
    project = pyproject["project"]
    base = {Requirement(item).name for item in project["dependencies"]}
    extras = {
        name: {Requirement(item).name for item in items} for name, items in project["optional-dependencies"].items()
    }
    assert "onnxruntime" in extras["cpu"] and "onnxruntime-gpu" not in extras["cpu"] | base
    assert "onnxruntime-gpu" in extras["gpu"] and "onnxruntime" not in extras["gpu"] | base
    for name in ("cpu", "gpu"):
        assert not {package for package in extras[name] | base if package.startswith(FORBIDDEN_PACKAGES)}


@pytest.mark.parametrize("target", sorted(FLAVOURS))
def test_image_installs_its_own_extra_only(dockerfile: Dockerfile, target: str) -> None:
    wanted, other = FLAVOURS[target]
    stages = [_builder(dockerfile, dockerfile.stage(target)), dockerfile.stage(target)]
    pip_args = [argument for stage in stages for argument in install_arguments(stage, "pip")]
    apt_args = [argument for stage in stages for argument in install_arguments(stage, "apt-get")]
    project_installs = [argument for argument in pip_args if argument.split("[")[0] in (".", "/src", "./")]
    assert project_installs, f"the {target} image never pip-installs the project: {pip_args}"
    assert all(_extras(argument) == {wanted} for argument in project_installs), project_installs
    wrong = "onnxruntime-gpu" if target == "cpu" else "onnxruntime"
    for argument in pip_args + apt_args:
        name = re.split(r"[\[<>=!~ ;]", argument)[0].lower()
        assert name != wrong and other not in _extras(argument), f"{target} image installs {argument}"
        assert not name.startswith(FORBIDDEN_PACKAGES) and "tensorflow" not in argument.lower(), argument
        assert not _extras(argument) & {"train", "train-gpu", "dev"}, argument


@pytest.mark.parametrize("target", sorted(FLAVOURS))
def test_runtime_stage_runs_as_a_created_non_root_user(dockerfile: Dockerfile, target: str) -> None:
    stage = dockerfile.stage(target)
    user = stage.last("USER")
    assert user is not None, f"stage {target} runs as root"
    name = user.args.split(":")[0].strip()
    assert name not in ("root", "0", "")
    cmd = stage.last("CMD")
    assert cmd is not None and user.line < cmd.line
    # The UID or name has a passwd entry, created in this stage.
    created = " ".join(item.args for item in stage.all("RUN") if re.search(r"\b(useradd|adduser)\b", item.args))
    assert re.search(rf"(--uid[ =]{name}\b|\b{name}\s*$|\b{name}\s*&&)", created), created


@pytest.mark.parametrize("target", sorted(FLAVOURS))
def test_runtime_environment(dockerfile: Dockerfile, target: str) -> None:
    stage = dockerfile.stage(target)
    env = stage.env()
    facevae = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    assert set(facevae) <= SETTINGS_VARIABLES, f"unknown settings: {set(facevae) - SETTINGS_VARIABLES}"
    assert facevae[f"{ENV_PREFIX}HOST"] == "0.0.0.0"  # reachable through the published port
    assert int(facevae[f"{ENV_PREFIX}PORT"]) == DEFAULT_PORT
    exposed = {int(word.split("/")[0]) for item in stage.all("EXPOSE") for word in item.args.split()}
    assert exposed == {DEFAULT_PORT}
    # The model is the baked copy of the repository's bundle for this target, at the path FACEVAE_MODEL names.
    model = facevae[f"{ENV_PREFIX}MODEL"]
    bundle_source = BAKED[target].relative_to(REPO_ROOT).as_posix()
    baked = [
        destination.rstrip("/")
        for sources, destination, flags in copy_instructions(stage)
        if not flags and [source.rstrip("/") for source in sources] == [bundle_source]
    ]
    assert baked == [model.rstrip("/")], f"FACEVAE_MODEL={model} but {bundle_source} is copied to {baked}"
    Settings(**{key[len(ENV_PREFIX) :].lower(): value for key, value in facevae.items()})  # the values validate


@pytest.mark.parametrize("target", sorted(FLAVOURS))
def test_healthcheck_probes_readiness_without_curl(dockerfile: Dockerfile, target: str, app_paths: set[str]) -> None:
    stage = dockerfile.stage(target)
    checks = stage.all("HEALTHCHECK")
    assert len(checks) == 1
    check = parse_healthcheck(checks[0].args)
    assert check.command is not None, "exec form, so no shell is needed"
    assert check.command[:2] == ["python", "-c"], check.command
    urls = re.findall(r"https?://[^'\"]+", " ".join(check.command))
    assert len(urls) == 1 and re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", urls[0]), urls
    path = urls[0].split("/", 3)[3]
    assert "/" + path == "/health/ready" and "/health/ready" in app_paths
    assert "FACEVAE_PORT" in check.command[2], "the probe follows the configured port"
    assert {"interval", "timeout", "start-period", "retries"} <= set(check.options)


@pytest.mark.parametrize("target", sorted(FLAVOURS))
def test_start_command_is_exec_form_and_configured_by_environment(dockerfile: Dockerfile, target: str) -> None:
    """Exec form makes the server PID 1, so `docker stop`'s SIGTERM reaches uvicorn and it shuts down gracefully."""
    stage = dockerfile.stage(target)
    entrypoint = stage.last("ENTRYPOINT")
    cmd = stage.last("CMD")
    assert cmd is not None
    argv = (exec_form(entrypoint.args) if entrypoint else []) or []
    cmd_argv = exec_form(cmd.args)
    assert cmd_argv is not None and (entrypoint is None or argv), "shell form would put /bin/sh in front as PID 1"
    argv += cmd_argv
    assert argv[:3] == ["python", "-m", "service"] or argv[:1] == ["facevae-serve"], argv
    # Flags would override FACEVAE_* (the documented way to replace the model or move the port) and the probe.
    assert not [word for word in argv if word.startswith("--")], argv
    assert "sh" not in {Path(word).name for word in argv}


def test_copy_sources_exist_and_are_in_the_build_context(
    dockerfile: Dockerfile, ignore_patterns: list[tuple[bool, re.Pattern[str]]]
) -> None:
    bundle_sources = {bundle.relative_to(REPO_ROOT).as_posix() for bundle in BAKED.values()}
    checked = 0
    for stage in dockerfile.stages:
        for sources, _, flags in copy_instructions(stage):
            if "from" in flags:
                continue
            for source in (source.rstrip("/") for source in sources):
                if any(char in source for char in "*?[") or source in bundle_sources:
                    continue  # optional globs; the bundles have their own test
                path = REPO_ROOT / source
                assert path.exists(), f"COPY source {source} (stage {stage.name}) does not exist"
                files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
                assert files, source
                for file in files:
                    relative = file.relative_to(REPO_ROOT).as_posix()
                    assert not is_ignored(relative, ignore_patterns), f"{relative} is left out by .dockerignore"
                    checked += 1
    assert checked > 10


def test_dockerignore_keeps_out_what_images_must_not_hold(ignore_patterns: list[tuple[bool, re.Pattern[str]]]) -> None:
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "runs/sweep/bundle/encoder.onnx",
        "data/celeba/img_align_celeba/000001.jpg",
        "tests/test_service_api.py",
        ".pytest_cache/v/cache/nodeids",
        "service/api/__pycache__/app.cpython-311.pyc",
        "training/__pycache__",
        "training/.ipynb_checkpoints/x.py",
    ):
        assert is_ignored(path, ignore_patterns), path
    for path in ("pyproject.toml", "service/api/app.py", "service/api/routers/health.py", "training/model.py"):
        assert not is_ignored(path, ignore_patterns), path
    for bundle in BAKED.values():
        assert not is_ignored(f"{bundle.relative_to(REPO_ROOT).as_posix()}/{ENCODER_FILE}", ignore_patterns)


@pytest.mark.parametrize("target", sorted(BAKED))
def test_baked_bundle_is_in_the_build_context(target: str, ignore_patterns: list[tuple[bool, re.Pattern[str]]]) -> None:
    """The images bake their bundle in, so `docker build` fails until it is committed."""
    bundle = BAKED[target]
    for name in BUNDLE_FILES:
        relative = (bundle / name).relative_to(REPO_ROOT).as_posix()
        assert (bundle / name).is_file(), relative
        assert not is_ignored(relative, ignore_patterns), relative


def test_wheel_the_images_install_holds_every_module_and_the_page(tmp_path: Path) -> None:
    """The images `pip install .` from what the Dockerfile copies (a wheel, not the checkout), so every package and
    the page's files must be in that wheel. Built from a copy, as in the image: no stale build/ folder helps."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", source)
    for package in ("service", "training", "facevae_client"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    copied = [
        path.relative_to(source).as_posix()
        for package in ("service", "training", "facevae_client")
        for path in (source / package).rglob("*")
        if path.is_file()
    ]
    assert "service/api/web/static/index.html" in copied and "service/api/routers/faces.py" in copied
    missing = sorted(set(copied) - names)
    assert not missing, f"missing from the wheel: {missing}"


# ---- docker-compose.yml -------------------------------------------------------------------------------------------


def test_compose_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"facevae", "facevae-gpu", "facevae-replica", "proxy"}
    # `docker compose up` starts the production path: the replicas behind the proxy, which stops slow clients.
    assert "profiles" not in services["facevae-replica"] and "profiles" not in services["proxy"]
    assert services["facevae"]["profiles"] == ["direct"]  # uvicorn published as is: opt-in
    assert services["facevae-gpu"]["profiles"] == ["gpu"]


@pytest.mark.parametrize(
    ("service", "target"), [("facevae", "cpu"), ("facevae-gpu", "gpu"), ("facevae-replica", "cpu")]
)
def test_compose_builds_existing_targets(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, service: str, target: str
) -> None:
    build = services[service]["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context.is_dir()
    dockerfile_path = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile_path.is_file()
    assert build["target"] == target
    assert target in {stage.name for stage in parse_dockerfile(dockerfile_path.read_text()).stages}
    assert services[service]["image"].endswith(f":{target}")


@pytest.mark.parametrize("service", FACEVAE_SERVICES)
def test_compose_service_health_restart_and_settings(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, service: str, app_paths: set[str]
) -> None:
    spec = services[service]
    argv = healthcheck_argv(spec["healthcheck"]["test"])
    assert "/health/ready" in " ".join(argv) and "/health/ready" in app_paths
    image_check = parse_healthcheck(dockerfile.stage(spec["build"]["target"]).all("HEALTHCHECK")[0].args)
    assert argv == image_check.command, "compose restates the image's probe; keep them the same"
    assert spec["restart"] in ("always", "unless-stopped", "on-failure")
    assert "container_name" not in spec
    environment = compose_environment(spec)
    assert set(environment) <= SETTINGS_VARIABLES, f"unknown settings: {set(environment) - SETTINGS_VARIABLES}"
    Settings(**{key[len(ENV_PREFIX) :].lower(): value for key, value in environment.items()})  # the values validate
    assert _container_port(dockerfile, spec) == DEFAULT_PORT


def test_compose_port_mappings(services: dict[str, dict[str, Any]], dockerfile: Dockerfile) -> None:
    published = {}
    for name in ("facevae", "facevae-gpu"):
        mappings = parse_ports(services[name]["ports"])
        assert [mapping.container for mapping in mappings] == [_container_port(dockerfile, services[name])]
        published[name] = mappings[0].host
    # The default path's front publishes the documented port; the direct services can run beside it.
    (front,) = parse_ports(services["proxy"]["ports"])
    assert front.host == DEFAULT_PORT
    assert len({*published.values(), front.host}) == len(published) + 1, "all can run at once"
    # Replicas publish nothing (several containers cannot share a host port); only the proxy is reachable.
    assert "ports" not in services["facevae-replica"]


def test_gpu_service_reserves_an_nvidia_gpu_and_insists_on_it(services: dict[str, dict[str, Any]]) -> None:
    spec = services["facevae-gpu"]
    devices = spec["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert device.get("count") == 1 or device.get("device_ids")
    settings = Settings(**{key[len(ENV_PREFIX) :].lower(): value for key, value in compose_environment(spec).items()})
    assert settings.require_gpu
    assert not settings.providers or settings.providers[0] == "CUDAExecutionProvider"


def test_scale_out_replicas_behind_the_proxy(services: dict[str, dict[str, Any]]) -> None:
    assert services["facevae-replica"]["deploy"]["replicas"] >= 2
    proxy = services["proxy"]
    assert proxy["depends_on"]["facevae-replica"]["condition"] == "service_healthy"
    assert proxy["restart"] in ("always", "unless-stopped", "on-failure")
    assert "healthcheck" in proxy


# ---- deploy/nginx.conf --------------------------------------------------------------------------------------------


def _nginx_mount(proxy: dict[str, Any]) -> tuple[Path, str]:
    mounts = []
    for volume in proxy["volumes"]:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        if "nginx" in target:
            mounts.append(((COMPOSE_FILE.parent / source).resolve(), target))
    assert len(mounts) == 1, proxy["volumes"]
    return mounts[0]


@pytest.fixture(scope="module")
def nginx(services: dict[str, dict[str, Any]]) -> Directive:
    source, _ = _nginx_mount(services["proxy"])
    return parse_nginx(source.read_text())


def test_nginx_parser_reads_blocks_and_sizes() -> None:
    tree = parse_nginx('http { upstream u { server a:1 resolve; } server { listen 80; add_header X "a;b"; } }')
    assert [d.args for d in tree.find("server") if d.block is None] == [["a:1", "resolve"]]
    assert tree.find("add_header")[0].args == ["X", "a;b"]
    with pytest.raises(ValueError):
        parse_nginx("http { listen 80 }")
    assert nginx_size("10m") == 10 * 1024 * 1024 and nginx_size("512k") == 512 * 1024 and nginx_size("0") > 1e18
    assert duration_seconds("60s") == 60 and duration_seconds("1m") == 60


def test_nginx_config_is_a_mounted_full_config(services: dict[str, dict[str, Any]], nginx: Directive) -> None:
    source, target = _nginx_mount(services["proxy"])
    assert source == REPO_ROOT / "deploy" / "nginx.conf" and source.is_file()
    assert target == "/etc/nginx/nginx.conf"  # replaces the image's main config, so it needs its own events/http
    assert [d.name for d in nginx.block or [] if d.block is not None] == ["events", "http"]


def test_nginx_balances_over_every_replica(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, nginx: Directive
) -> None:
    upstreams = nginx.find("upstream")
    assert len(upstreams) == 1
    upstream = upstreams[0]
    servers = [d for d in upstream.block or [] if d.name == "server"]
    assert len(servers) == 1
    host, _, port = servers[0].args[0].rpartition(":")
    assert host == "facevae-replica" and host in services
    assert int(port) == _container_port(dockerfile, services[host])
    # Docker's DNS answers with every replica; `resolve` keeps following it, which needs a zone and nginx >= 1.27.3.
    resolvers = nginx.find("resolver")
    assert resolvers and resolvers[0].args[0] == "127.0.0.11"
    assert "resolve" in servers[0].args and upstream.find("zone")
    image, _, tag = services["proxy"]["image"].partition(":")
    assert image == "nginx"
    version = Version(re.match(r"\d+(\.\d+)*", tag).group(0))  # type: ignore[union-attr]
    assert version >= Version("1.27.3"), tag
    # Every request, health probes included, goes to that upstream.
    passes = nginx.find("proxy_pass")
    assert passes and {d.args[0] for d in passes} == {f"http://{upstream.args[0]}"}
    locations = {d.args[-1] for d in nginx.find("location")}
    assert any("/health/ready".startswith(prefix) for prefix in locations), locations


def test_nginx_limits_match_the_service(services: dict[str, dict[str, Any]], nginx: Directive) -> None:
    (listen,) = nginx.find("listen")
    assert [mapping.container for mapping in parse_ports(services["proxy"]["ports"])] == [int(listen.args[0])]
    # nginx must accept every body the service accepts; the service's own 413 handles the rest.
    limits = {nginx_size(d.args[0]) for d in nginx.find("client_max_body_size")}
    service_limit = int(
        compose_environment(services["facevae-replica"]).get(f"{ENV_PREFIX}MAX_BODY_BYTES", DEFAULT_MAX_BODY)
    )
    assert limits and min(limits) >= max(DEFAULT_MAX_BODY, service_limit)
    timeouts = {
        d.name: duration_seconds(d.args[0]) for d in nginx.find("proxy_read_timeout") + nginx.find("proxy_send_timeout")
    }
    assert set(timeouts) == {"proxy_read_timeout", "proxy_send_timeout"}
    assert all(30 <= seconds <= 600 for seconds in timeouts.values()), timeouts
    (connect,) = nginx.find("proxy_connect_timeout")
    assert duration_seconds(connect.args[0]) <= 10


def test_nginx_stops_slow_clients_before_the_replicas(nginx: Directive) -> None:
    """Headers that never finish and stalled uploads time out at the proxy, and one address cannot hold every
    connection: uvicorn has no header timeout, and a stalled upload would hold a replica's admission slot."""
    for name in ("client_header_timeout", "client_body_timeout"):
        (directive,) = nginx.find(name)
        assert duration_seconds(directive.args[0]) <= Settings.model_fields["body_timeout"].default, name
    zones = nginx.find("limit_conn_zone")
    (limit,) = nginx.find("limit_conn")
    assert zones and zones[0].args[0] == "$binary_remote_addr"
    assert limit.args[0] == zones[0].args[1].split("=")[1].split(":")[0]  # the zone it names is that one
    (worker_connections,) = nginx.find("worker_connections")
    assert 1 <= int(limit.args[1]) < int(worker_connections.args[0])
