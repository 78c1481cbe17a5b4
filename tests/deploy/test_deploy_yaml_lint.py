"""Every YAML file of the deployment passes yamllint (syntax, duplicate keys, indentation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.deploy_checks import COMPOSE_FILE, DEPLOY

pytestmark = pytest.mark.unit

# yamllint's defaults, less what these files do on purpose: flow mappings with spaces
# inside braces ({ name: x }), long comment lines with URLs and PromQL, no `---` start.
CONFIG = """
extends: default
rules:
  line-length: { max: 160 }
  braces: { min-spaces-inside: 0, max-spaces-inside: 1 }
  brackets: { min-spaces-inside: 0, max-spaces-inside: 1 }
  document-start: disable
  truthy: { check-keys: false }
  comments: { min-spaces-from-content: 1 }
  comments-indentation: disable
"""

FILES = [COMPOSE_FILE, *sorted(DEPLOY.rglob("*.yml")), *sorted(DEPLOY.rglob("*.yaml"))]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DEPLOY.parent)))
def test_yamllint(path: Path) -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    problems = list(linter.run(path.read_text(), YamlLintConfig(CONFIG), str(path)))
    assert not problems, "\n".join(f"{path.name}:{p.line}:{p.column} {p.desc} ({p.rule})" for p in problems)
