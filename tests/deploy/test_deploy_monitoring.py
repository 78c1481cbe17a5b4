"""Prometheus scrape config, alert rules and the Grafana dashboard refer to real metrics.

Every PromQL expression is parsed (promql-parser, the Rust parser's Python binding) and each
metric it selects must be one the code registers with prometheus_client (histograms as
``_bucket``/``_sum``/``_count``), with label names the metric has and label values the code
produces (pipeline states, stages, listener outcomes, ...). No Prometheus is needed.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.deploy.deploy_checks import (
    COMPOSE_FILE,
    GRAFANA,
    K8S,
    OPERATIONS,
    PROMETHEUS,
    check_promql,
    load_yaml,
    load_yaml_documents,
    markdown_anchors,
)

pytestmark = pytest.mark.unit


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads((GRAFANA / "medhash.json").read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"]
            for target in panel.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    # Grafana replaces its interval variables before Prometheus sees the query
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_rule_uses_real_metrics_labels_and_values(rule: dict) -> None:
    assert not check_promql(rule["expr"]), check_promql(rule["expr"])


def test_alert_rules_are_complete_and_point_at_the_runbook() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    anchors = markdown_anchors(OPERATIONS)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, (rule["alert"], anchor)
    # what the issue asks to be alerted on
    exprs = " ".join(rule["expr"] for rule in rules)
    for needle in ('outcome="out_of_resources"', "medhash_instances", 'outcome="failed"', "redis_key_size",
                   "medhash_index_generation", "medhash_search_seconds_bucket"):
        assert needle in exprs, needle


def test_every_alert_is_explained_in_operations_md() -> None:
    text = OPERATIONS.read_text()
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in text, f"{rule['alert']} is not explained in docs/operations.md"


def test_prometheus_config_scrapes_every_medhash_process_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert [f.rsplit("/", 1)[-1] for f in config["rule_files"]] == ["alerts.yml"]
    compose = load_yaml(COMPOSE_FILE)
    environment = compose["x-medhash-env"]
    metrics_port = int(environment["MEDHASH_METRICS_PORT"])
    http_port = int(environment["MEDHASH_HTTP_PORT"])
    targets: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                assert name in compose["services"], (job["job_name"], name)
                targets[name] = sd["port"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host = target.split(":")[0]
                assert host == "localhost" or host in compose["services"], target
    medhash = {name for name, service in compose["services"].items() if "build" in service}
    assert set(targets) == medhash, "every medhash container is scraped, and nothing else by DNS"
    for name, port in targets.items():
        assert port == (http_port if name == "search" else metrics_port), name
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"medhash-listener", "medhash-search", "medhash-indexer", "medhash-reconciler",
            "medhash-preprocess", "medhash-encode"} <= jobs


def test_kubernetes_scrape_config_gives_the_same_job_names() -> None:
    config = load_yaml(PROMETHEUS / "kubernetes-scrape.yml")
    (job,) = config["scrape_configs"]
    relabel = {rule.get("target_label"): rule for rule in job["relabel_configs"]}
    assert relabel["job"]["replacement"] == "medhash-$1"
    compose_jobs = {job["job_name"] for job in load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
                    if job["job_name"].startswith("medhash-")}
    components = set()
    for path in K8S.glob("*.yaml"):
        for doc in load_yaml_documents(path):
            if doc.get("kind") == "Deployment":
                components.add(doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])
    assert {f"medhash-{component}" for component in components} == compose_jobs


def test_dashboard_is_generated_and_queries_real_metrics() -> None:
    spec = importlib.util.spec_from_file_location("make_dashboard", GRAFANA / "make_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (GRAFANA / "medhash.json").read_text() == module.render(), \
        "medhash.json is stale: run python deploy/grafana/make_dashboard.py"
    problems = {title: check_promql(grafana_to_promql(expr)) for title, expr in dashboard_exprs()}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}


def test_dashboard_covers_what_an_operator_watches() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    exprs = " ".join(expr for _, expr in dashboard_exprs())
    for needle in ("medhash_instances_received_total", "redis_key_size", "medhash_stage_seconds_bucket",
                   "medhash_stage_outcomes_total", "medhash_index_size", "medhash_index_generation",
                   "medhash_search_seconds_bucket"):
        assert needle in exprs, needle
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioned["datasources"]
    assert datasource["uid"] == board["templating"]["list"][0]["current"]["value"]
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "medhash.yml")["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
