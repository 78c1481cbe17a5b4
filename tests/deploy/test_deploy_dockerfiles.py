"""deploy/Dockerfile and deploy/Dockerfile.cuda: what they copy exists, what they run is real.

Docker cannot run here; the instructions are parsed and every path, setting and command
they name is checked against the tree, and the package they install is built as a wheel to
check that it carries what the services need at run time.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.deploy.deploy_checks import (
    DEPLOY,
    ROOT,
    check_medhash_command,
    check_settings_values,
    setting_variables,
)

pytestmark = pytest.mark.unit

DOCKERFILES = sorted(path for path in DEPLOY.glob("Dockerfile*") if not path.name.endswith(".dockerignore"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    result = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def test_both_dockerfiles_exist() -> None:
    assert [path.name for path in DOCKERFILES] == ["Dockerfile", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_pass_the_dockerignore(dockerfile: Path) -> None:
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().split()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "**" in ignore, "the context should start from nothing and include what is copied"
    copies = 0
    for keyword, args in instructions(dockerfile):
        if keyword != "COPY" or args.startswith("--from"):
            continue
        *sources, _destination = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such file"
            assert source.rstrip("/") in included, f"{source} is excluded by {dockerfile.name}.dockerignore"
            copies += 1
    assert copies >= 5
    # and every package that pyproject installs is copied
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {args.split()[0] for keyword, args in instructions(dockerfile) if keyword == "COPY"}
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_python_matches_pyproject(dockerfile: Path) -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=3\.(\d+)", requires).group(1)  # type: ignore[union-attr]
    args = dict(arg.split("=", 1) for keyword, arg in instructions(dockerfile) if keyword == "ARG" and "=" in arg)
    assert args["PYTHON_IMAGE"].startswith(f"python:3.{minor}-"), args["PYTHON_IMAGE"]
    froms = [arg for keyword, arg in instructions(dockerfile) if keyword == "FROM"]
    assert all(item.startswith("${PYTHON_IMAGE}") for item in froms), froms


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_cmd_is_a_real_command_and_env_names_real_settings(dockerfile: Path) -> None:
    (cmd,) = [arg for keyword, arg in instructions(dockerfile) if keyword == "CMD"]
    check_medhash_command(json.loads(cmd))
    env: dict[str, str] = {}
    for keyword, args in instructions(dockerfile):
        if keyword == "ENV":
            env.update(dict(token.split("=", 1) for token in shlex.split(args)))
    unknown = {name for name in env if name.startswith("MEDHASH_")} - setting_variables()
    assert not unknown, f"{dockerfile.name} sets settings that do not exist: {unknown}"
    check_settings_values(env)
    assert env["MEDHASH_DATA_DIR"] == "/data"
    # no model weights are baked in or fetched: nothing copies or downloads a checkpoint
    text = dockerfile.read_text()
    assert not re.search(r"\.(pt|pth|ckpt|safetensors)\b", text.replace("model.pt", ""))
    users = [arg for keyword, arg in instructions(dockerfile) if keyword == "USER"]
    assert users and users[-1] != "root" and users[-1] != "0", "the image must not run as root"


def test_cuda_image_differs_only_in_torch_and_gpu_settings() -> None:
    cpu = dict(instructions(DEPLOY / "Dockerfile"))
    cuda = dict(instructions(DEPLOY / "Dockerfile.cuda"))
    assert "TORCH_INDEX_URL" in (DEPLOY / "Dockerfile").read_text()
    assert "TORCH_INDEX_URL" not in (DEPLOY / "Dockerfile.cuda").read_text()
    assert "MEDHASH_DEVICE=cuda" in cuda["ENV"] and "NVIDIA_DRIVER_CAPABILITIES" in cuda["ENV"]
    assert cpu["USER"] == cuda["USER"] and cpu["WORKDIR"] == cuda["WORKDIR"]


@pytest.mark.slow
def test_installed_package_ships_the_search_page(tmp_path: Path) -> None:
    """The images `pip install .`; the search service serves its page from package data."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("medhash-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    page = ROOT / "services" / "search" / "page"
    for item in page.iterdir():
        assert f"services/search/page/{item.name}" in names, (
            f"{item.name} of the search page is not in the wheel: declare it as package data "
            "in pyproject.toml ([tool.setuptools.package-data])")
