"""Write docs/reference/configuration.md from conf/, the schemas and the metric registry.

    python scripts/config_reference.py

A test checks the page equals ``app.help.configuration_reference()``: run this after changing a
YAML's leading comment, a schema or the metric registry.
"""

from pathlib import Path

from app.help import configuration_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "configuration.md"

if __name__ == "__main__":
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(configuration_reference())
    print(f"wrote {PAGE}")
