"""The contract's command forms (`medhash send` exit codes, `status --json`, `settings` masking), and
the command without the test extras installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.config import Settings
from shared.dicom.synthetic import write_ct_series
from tests.conftest import RunningListener, dcmtk, dcmtk_env

pytestmark = pytest.mark.integration

MEDHASH = [sys.executable, "-m", "medhash.cli"]


def run(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDHASH_DATA_DIR": str(settings.data_dir)}
    return subprocess.run([*MEDHASH, *args], env=env, capture_output=True, text=True, timeout=120)


def test_send_then_status(
    embedded_settings: Settings, listener_factory: Callable[[Settings], RunningListener], tmp_path: Path
) -> None:
    listener = listener_factory(embedded_settings)
    write_ct_series(tmp_path / "study", 3, rows=64, columns=64)
    sent = run(["send", str(tmp_path / "study"), "--host", "127.0.0.1", "--port", str(listener.port),
                "--called-ae", "MEDHASH"], embedded_settings)
    assert sent.returncode == 0, sent.stderr
    assert "stored" in sent.stderr

    status = run(["status", "--json"], embedded_settings)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["total"] == 3 and report["states"]["received"] == 3
    assert set(report["states"]) == {"received", "preprocessed", "encoded", "indexed", "failed", "skipped"}


def test_send_exits_non_zero_when_a_file_was_not_stored(
    embedded_settings: Settings, listener_factory: Callable[[Settings], RunningListener], tmp_path: Path
) -> None:
    listener = listener_factory(embedded_settings)
    folder = tmp_path / "mixed"
    write_ct_series(folder, 2, rows=64, columns=64)
    (folder / "notes.txt").write_text("not DICOM")
    sent = run(["send", str(folder), "--port", str(listener.port), "--called-ae", "MEDHASH",
                "--json", str(tmp_path / "out.json")], embedded_settings)
    assert sent.returncode == 1
    results = json.loads((tmp_path / "out.json").read_text())
    assert sorted(r["status"] for r in results if r["status"] is not None) == [0, 0]
    assert any("not a DICOM" in r["reason"] for r in results)


def test_send_of_a_missing_path_says_so_in_one_line(embedded_settings: Settings, tmp_path: Path) -> None:
    sent = run(["send", str(tmp_path / "missing"), "--port", "1"], embedded_settings)
    assert sent.returncode == 2
    assert sent.stderr.strip() == f"medhash send: {tmp_path / 'missing'} is neither a file nor a folder: nothing to send"
    assert "Traceback" not in sent.stderr + sent.stdout


def test_settings_masks_every_secret(embedded_settings: Settings) -> None:
    secrets = {
        "MEDHASH_DATABASE_URL": "postgresql://medhash:pg-Secret1@db.example.org:5432/medhash",
        "MEDHASH_BROKER_URL": "redis://:redis-Secret2@redis:6379/0",
        "MEDHASH_S3_SECRET_KEY": "s3-Secret3",
        "MEDHASH_API_KEYS": "api-Secret4,api-Secret5",
    }
    env = {**os.environ, "MEDHASH_DATA_DIR": str(embedded_settings.data_dir), **secrets}
    shown = subprocess.run([*MEDHASH, "settings"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "Secret" not in shown.stdout
    values = json.loads(shown.stdout)
    assert values["database_url"] == "postgresql://medhash:***@db.example.org:5432/medhash"
    assert values["broker_url"] == "redis://:***@redis:6379/0"
    assert values["s3_secret_key"] == "***" and values["api_keys"] == ["***", "***"]


# --- the package without its test extras ------------------------------------------------------

BLOCKER = """
import os, runpy, sys

HIDDEN = set(os.environ["MEDHASH_TEST_HIDDEN_MODULES"].split(","))


class Hiding:
    # wraps each import finder so that a hidden module is found by none of them, exactly as
    # if its distribution were not installed (find_spec() is None, import raises)
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
sys.argv[0] = "medhash"
runpy.run_module("medhash.cli", run_name="__main__")
"""


def requirement_closure(requirements: list[str]) -> set[str]:
    """Every distribution these requirements install (with their extras), by normalised name."""
    from importlib.metadata import PackageNotFoundError, requires
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    pending = [(Requirement(text), "") for text in requirements]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        new_extras = [e for e in [""] + sorted(requirement.extras) if (name, e) not in seen]
        if not new_extras:
            continue
        seen.update((name, e) for e in new_extras)
        try:
            children = requires(name) or []
        except PackageNotFoundError:  # not installed here: nothing below it to block or keep
            continue
        pending += [(Requirement(child), e) for child in children for e in new_extras]
    return {name for name, _ in seen}


def modules_only_the_test_extra_installs() -> set[str]:
    """Top-level modules that only the `test` extra brings: what `pip install medhash` lacks."""
    import tomllib
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    only_tests = (requirement_closure(project["optional-dependencies"]["test"])
                  - requirement_closure(project["dependencies"]))
    return {module for module, dists in packages_distributions().items()
            if module.isidentifier() and all(canonicalize_name(d) in only_tests for d in dists)}


def without_test_extras(args: list[str], env: dict[str, str], tmp_path: Path, **kwargs: object) -> subprocess.Popen[str]:
    blocker = tmp_path / "no_test_extras.py"
    blocker.write_text(BLOCKER)
    env = {**env, "MEDHASH_TEST_HIDDEN_MODULES": ",".join(sorted(modules_only_the_test_extra_installs()))}
    return subprocess.Popen([sys.executable, str(blocker), *args], env=env, text=True, **kwargs)  # type: ignore[call-overload]


def test_the_cli_runs_without_the_test_extras(embedded_settings: Settings, tmp_path: Path) -> None:
    """`medhash --help` and a short `medhash serve` (listener + pipeline + search page) in a process
    where every distribution only the `test` extra installs (httpx, pytest, moto, ...) is missing."""
    blocked = modules_only_the_test_extra_installs()
    assert {"httpx", "pytest", "hypothesis", "moto"} <= blocked
    env = {**os.environ, "MEDHASH_DATA_DIR": str(tmp_path / "data"), "MEDHASH_DICOM_HOST": "127.0.0.1",
           "MEDHASH_DICOM_PORT": "0", "MEDHASH_HTTP_HOST": "127.0.0.1", "MEDHASH_HTTP_PORT": "0",
           "MEDHASH_METRICS_PORT": "0"}
    helped = without_test_extras(["--help"], env, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = helped.communicate(timeout=120)
    assert helped.returncode == 0, err
    assert "serve" in out and "send" in out

    serve = without_test_extras(["serve"], env, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert serve.stderr is not None
        lines: list[str] = []
        while not any("medhash listener: AE" in line for line in lines):
            line = serve.stderr.readline()
            assert line, "medhash serve ended:\n" + "".join(lines)
            lines.append(line)
        page = next(line for line in lines if "search page:" in line).split("search page: ")[1].strip()
        dicom_port = int(lines[-1].rsplit(":", 1)[1])
        from medhash.commands.demo import _post_search
        from tests.services.listener.dicomtools import png_of_zeros

        status, body = _post_search(page.rstrip("/"), png_of_zeros(), 5)
        assert status == 503 and b"model" in body  # parsed as a search, answered: no model yet
        echo = subprocess.run([dcmtk("echoscu"), "-aec", "MEDHASH", "127.0.0.1", str(dicom_port)],
                              env=dcmtk_env(), capture_output=True, timeout=30)
        assert echo.returncode == 0
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    assert serve.returncode == 0
