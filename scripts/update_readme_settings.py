"""Rewrite the README's settings table from shared/config.py (tests/shared/test_config.py checks it)."""

from pathlib import Path

from shared.config import settings_markdown_table

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
start = text.index("| Variable | Default | Meaning |")
end = text.index("\n\n", start)
readme.write_text(text[:start] + settings_markdown_table() + text[end:])
print(f"updated {readme}")
