"""What the deployment files may refer to, read from the code itself.

The deployment files (docker-compose.yml, deploy/) name commands, options, settings, queues,
images and metrics. These helpers collect the real ones from the package, so the tests can
check every reference without Docker, Kubernetes or Prometheus on this machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
OPERATIONS = ROOT / "docs" / "operations.md"

# Metrics that other programs export and the alerts/dashboard may use.
EXTERNAL_METRICS = {
    "up": set(),  # Prometheus itself, per target
    "redis_key_size": {"db", "key"},  # redis_exporter --check-single-keys: length of a list
}

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_MEDHASH_NAME = re.compile(r"\bMEDHASH_[A-Z0-9_]+\b")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- settings ---------------------------------------------------------------------------------

@cache
def setting_variables() -> frozenset[str]:
    """Every ``MEDHASH_*`` environment variable the settings object reads."""
    from shared.config import Settings

    return frozenset(f"MEDHASH_{name.upper()}" for name in Settings.model_fields)


def medhash_names(text: str) -> set[str]:
    """Every ``MEDHASH_*`` word in ``text``."""
    return set(_MEDHASH_NAME.findall(text))


def env_references(text: str) -> list[tuple[str, str | None, str | None]]:
    """Compose interpolations ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}``:
    (name, operator or None, argument or None)."""
    return [(name, op or None, arg if op else None) for name, op, arg in _ENV_REFERENCE.findall(text)]


def check_settings_values(values: dict[str, str]) -> None:
    """Build :class:`Settings` from ``values`` (MEDHASH_* variables): raises if one is invalid."""
    from shared.config import Settings

    prefix = "MEDHASH_"
    Settings(**{name[len(prefix):].lower(): value for name, value in values.items()
                if name.startswith(prefix)})


# --- the medhash command ----------------------------------------------------------------------

class CommandError(AssertionError):
    """A command line the ``medhash`` CLI would refuse."""


@cache
def medhash_cli() -> Any:
    """The ``medhash`` command as Typer builds it (a group with one command per sub-command)."""
    import typer

    from medhash.cli import app

    return typer.main.get_command(app)


def check_medhash_command(argv: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``argv`` (starting with ``medhash``) exactly as the CLI would, without running it.

    Returns (sub-command, parsed parameters); raises :class:`CommandError` for an unknown
    sub-command or option, or a value an option does not accept.
    """
    if len(argv) < 2 or argv[0] != "medhash":
        raise CommandError(f"not a medhash sub-command: {argv}")
    group = medhash_cli()
    name, args = argv[1], list(argv[2:])
    command = group.commands.get(name)
    if command is None:
        raise CommandError(f"no such medhash command: {name} (have {sorted(group.commands)})")
    try:
        with command.make_context(name, args) as ctx:
            params = dict(ctx.params)
    except Exception as exc:  # Typer's (vendored) click UsageError and its kin
        raise CommandError(f"medhash {name} {' '.join(args)}: {exc}") from exc
    if name == "worker":
        check_worker_params(params)
    return name, params


@cache
def queue_names() -> frozenset[str]:
    """The Celery queues of ``workers.app`` (each a Redis list named after it)."""
    from workers.app import app

    return frozenset(queue.name for queue in app.conf.task_queues)


def check_worker_params(params: dict[str, Any]) -> None:
    from celery.concurrency import get_available_pool_names

    queues = [queue.strip() for queue in str(params["queues"]).split(",")]
    unknown = set(queues) - queue_names()
    assert not unknown, f"worker consumes unknown queues {unknown}; queues are {sorted(queue_names())}"
    assert params["pool"] in get_available_pool_names(), f"unknown Celery pool {params['pool']}"


# --- metrics ----------------------------------------------------------------------------------

@cache
def code_metrics() -> dict[str, set[str]]:
    """Every sample name the code's metrics expose -> their label names.

    Imports the modules that define metrics, then reads prometheus_client's registry: a
    counter ``x_total`` exposes ``x_total`` (and ``x_created``), a histogram ``x`` exposes
    ``x_bucket`` (with ``le``), ``x_sum``, ``x_count``.
    """
    import prometheus_client

    import services.search.metrics  # noqa: F401 - registers the search service's metrics
    import shared.metrics  # noqa: F401

    names: dict[str, set[str]] = {}
    for collector in list(prometheus_client.REGISTRY._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else collector.collect():
            if not family.name.startswith("medhash_"):
                continue
            labels = set(getattr(collector, "_labelnames", ()))
            kind = family.type
            if kind == "counter":
                samples = [f"{family.name}_total", f"{family.name}_created"]
            elif kind == "histogram":
                samples = [f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count",
                           f"{family.name}_created"]
            else:
                samples = [family.name]
            for sample in samples:
                names[sample] = labels | ({"le"} if sample.endswith("_bucket") else set())
    return names


@cache
def label_values() -> dict[tuple[str, str], set[str]]:
    """Known values of enumerated labels: (metric sample prefix, label) -> values."""
    from services.search.errors import OUTCOMES
    from shared.pipeline.ingest import StoreStatus
    from shared.pipeline.states import Stage
    from shared.storage.catalog import InstanceState

    states = {state.value for state in InstanceState}
    return {
        ("medhash_instances", "state"): states,
        ("medhash_stage_outcomes_total", "stage"): {stage.value for stage in Stage},
        ("medhash_stage_outcomes_total", "outcome"): states | {"noop"},
        ("medhash_stage_seconds", "stage"): {stage.value for stage in Stage},
        ("medhash_instances_received_total", "outcome"):
            {status.name.lower() for status in StoreStatus} | {"duplicate"},
        ("medhash_search_requests_total", "outcome"): set(OUTCOMES.values()) | {"ok", "error"},
        ("medhash_search_seconds", "source"): {"upload", "instance"},
        ("redis_key_size", "key"): set(queue_names()),
    }


def selectors(expr: str) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """Every vector selector in a PromQL expression: (metric name, [(label, op, value)])."""
    import promql_parser

    found: list[tuple[str, list[tuple[str, str, str]]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, str(m.op), m.value) for m in node.matchers.matchers]
            found.append((node.name or "", matchers))
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector)
        for child in _children(node):
            visit(child)

    visit(promql_parser.parse(expr))
    return iter(found)


def _children(node: Any) -> list[Any]:
    import promql_parser

    if isinstance(node, promql_parser.AggregateExpr):
        return [child for child in (node.expr, node.param) if child is not None]
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        return [node.expr]
    return []


def check_promql(expr: str) -> list[str]:
    """Problems of one PromQL expression: unknown metrics, labels or label values."""
    problems: list[str] = []
    known = {**code_metrics(), **EXTERNAL_METRICS}
    values = label_values()
    for name, matchers in selectors(expr):
        if name not in known:
            problems.append(f"unknown metric {name!r}")
            continue
        for label, op, value in matchers:
            if label == "__name__":
                continue
            if name != "up" and label not in known[name]:
                problems.append(f"{name} has no label {label!r} (has {sorted(known[name])})")
                continue
            allowed = next((v for (prefix, lab), v in values.items()
                            if lab == label and name.startswith(prefix)), None)
            if allowed is None or op.endswith(("NotEqual", "NotRe")):
                continue  # a negative matcher may name anything
            wanted = value.split("|") if op.endswith("Re") else [value]
            unknown = [item for item in wanted if item not in allowed]
            if unknown:
                problems.append(f"{name}{{{label}}} never takes {unknown} (values: {sorted(allowed)})")
    return problems


# --- docs -------------------------------------------------------------------------------------

def markdown_anchors(path: Path) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings."""
    anchors = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = match.group(1).strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            anchors.add(title.replace(" ", "-"))
    return anchors
