"""Writes deploy/grafana/medhash.json, the medhash Grafana dashboard.

    python deploy/grafana/make_dashboard.py        # after editing the panels below

The JSON is generated so that every panel has the same shape and the queries sit in one
readable list; tests/deploy checks that the committed JSON is this script's output and that
every metric it queries exists in the code.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("medhash.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, description, [(expr, legend)], width)
Panel = tuple[str, str, str, list[tuple[str, str]], int]

ROWS: list[tuple[str, list[Panel]]] = [
    ("Ingest (listener)", [
        ("Instances received / s by outcome", "reqps",
         ("C-STORE answers: success, duplicate, out_of_resources (0xA700: store or catalog "
          "down, the sender retries), cannot_understand (0xC000)."),
         [("sum by (outcome) (rate(medhash_instances_received_total[$__rate_interval]))",
           "{{outcome}}")], 8),
        ("Bytes stored / s", "Bps", "Bytes of instances durably stored by the listeners.",
         [("sum(rate(medhash_bytes_received_total[$__rate_interval]))", "stored")], 5),
        ("C-STORE latency", "s",
         "From a dataset's arrival to its answer (durable write + catalog commit).",
         [("histogram_quantile(0.5, sum by (le) (rate(medhash_store_seconds_bucket[$__rate_interval])))", "p50"),
          ("histogram_quantile(0.99, sum by (le) (rate(medhash_store_seconds_bucket[$__rate_interval])))", "p99")], 6),
        ("Associations", "short", "Open DICOM associations, and rejections per second by reason.",
         [("sum(medhash_associations_active)", "open"),
          ("sum by (reason) (rate(medhash_associations_rejected_total[$__rate_interval]))",
           "rejected/s {{reason}}")], 5),
    ]),
    ("Pipeline", [
        ("Instances by state (catalog)", "short",
         "What the catalog holds, as the reconciler last counted (medhash_instances).",
         [("max by (state) (medhash_instances)", "{{state}}")], 8),
        ("Queue depths (Redis lists)", "short",
         ("Messages waiting in each Celery queue: what KEDA scales the workers on. Messages "
          "a worker has taken are not counted."),
         [('redis_key_size{key=~"preprocess|encode|index"}', "{{key}}")], 8),
        ("Backlog per stage (catalog)", "short",
         ("Instances waiting for each stage according to the catalog, which unlike the queue "
          "also counts work whose message was lost (the reconciler re-sends it)."),
         [('max(medhash_instances{state="received"})', "preprocess (received)"),
          ('max(medhash_instances{state="preprocessed"})', "encode (preprocessed)"),
          ('max(medhash_instances{state="encoded"})', "index (encoded)")], 8),
        ("Stage latency p50", "s",
         "Time per instance (preprocess, encode) or per flush (index).",
         [("histogram_quantile(0.5, sum by (le, stage) (rate(medhash_stage_seconds_bucket[$__rate_interval])))",
           "{{stage}}")], 8),
        ("Stage latency p95", "s", "Time per instance (preprocess, encode) or per flush (index).",
         [("histogram_quantile(0.95, sum by (le, stage) (rate(medhash_stage_seconds_bucket[$__rate_interval])))",
           "{{stage}}")], 8),
        ("Stage throughput / s", "ops",
         "Instances leaving each stage per second, by the state they reached.",
         [('sum by (stage, outcome) (rate(medhash_stage_outcomes_total{outcome!="noop"}[$__rate_interval]))',
           "{{stage}} -> {{outcome}}")], 8),
        ("Failures and refusals (increase over the interval)", "short",
         ("Instances ending failed or skipped per stage (the reason is in the catalog: "
          "GET /v1/instances/{uid}), listener refusals, and failed searches."),
         [('sum by (stage, outcome) (increase(medhash_stage_outcomes_total{outcome=~"failed|skipped"}[$__rate_interval]))',
           "{{stage}} {{outcome}}"),
          ('sum by (outcome) (increase(medhash_instances_received_total{outcome=~"out_of_resources|cannot_understand"}[$__rate_interval]))',
           "listener {{outcome}}"),
          ('sum by (outcome) (increase(medhash_search_requests_total{outcome!="ok"}[$__rate_interval]))',
           "search {{outcome}}")], 12),
        ("Duplicate deliveries / s", "ops",
         ("Tasks that found their instance already past the stage (redelivery, reconciler "
          "re-send): harmless, but a steady high rate means MEDHASH_RECONCILE_AFTER_S is "
          "shorter than the real queue wait."),
         [('sum by (stage) (rate(medhash_stage_outcomes_total{outcome="noop"}[$__rate_interval]))',
           "{{stage}}")], 12),
    ]),
    ("Index and search", [
        ("Index size (codes)", "short", "Codes in the generation each search replica serves.",
         [("max by (instance) (medhash_index_size)", "{{instance}}")], 6),
        ("Index generation", "none",
         ("Generation each search replica has loaded (-1: none yet). It should step up "
          "every MEDHASH_INDEX_FLUSH_S while codes arrive."),
         [("max by (instance) (medhash_index_generation)", "{{instance}}")], 6),
        ("Search latency", "s", "POST /v1/search, by query source.",
         [("histogram_quantile(0.5, sum by (le, source) (rate(medhash_search_seconds_bucket[$__rate_interval])))", "p50 {{source}}"),
          ("histogram_quantile(0.95, sum by (le, source) (rate(medhash_search_seconds_bucket[$__rate_interval])))", "p95 {{source}}"),
          ("histogram_quantile(0.99, sum by (le, source) (rate(medhash_search_seconds_bucket[$__rate_interval])))", "p99 {{source}}")], 6),
        ("Searches / s by outcome", "reqps", "POST /v1/search answers by outcome.",
         [("sum by (outcome) (rate(medhash_search_requests_total[$__rate_interval]))", "{{outcome}}"),
          ("sum(rate(medhash_index_refresh_failures_total[$__rate_interval]))", "index refresh failures")], 6),
        ("Targets up", "none", "1 per medhash process Prometheus can scrape.",
         [('sum by (job) (up{job=~"medhash-.*"})', "{{job}}")], 24),
    ]),
]


def panel(panel_id: int, x: int, y: int, spec: Panel) -> dict:
    title, unit, description, targets, width = spec
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": width, "h": 8},
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"fillOpacity": 10, "showPoints": "never"}},
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": expr,
             "legendFormat": legend, "range": True}
            for n, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard() -> dict:
    panels: list[dict] = []
    next_id, y = 1, 0
    for row_title, row_panels in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        next_id, y, x = next_id + 1, y + 1, 0
        for spec in row_panels:
            if x + spec[4] > 24:
                x, y = 0, y + 8
            panels.append(panel(next_id, x, y, spec))
            next_id, x = next_id + 1, x + spec[4]
        y += 8
    return {
        "uid": "medhash",
        "title": "medhash",
        "description": ("medhash pipeline: ingest, preprocess/encode/index stages, index and "
                        "search. Alerts and runbook: docs/operations.md."),
        "tags": ["medhash"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "current": {"text": "Prometheus", "value": "prometheus"},
            "hide": 0,
        }]},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
