"""Write the spec as YAML and as an HTML reference rendered through a jinja2 template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

from llama_post.openapi.generator import build_spec
from llama_post.routes import all_routes

SPEC_NAME = "llama-post.yaml"
HTML_NAME = "llama-post.html"


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml(spec: dict[str, Any]) -> str:
    return yaml.dump(spec, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def render_html(spec: dict[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("llama_post", "openapi"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    operations: dict[str, list[dict[str, Any]]] = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            operations.setdefault(op["tags"][0], []).append({"path": path, "method": method, **op})
    return env.get_template("reference.html.j2").render(
        spec=spec, operations=operations, ref_name=_ref_name
    )


def _ref_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_ref_name(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_ref_name(schema.get('items'))}]"
    return str(schema.get("type", "any"))


def generated_files() -> dict[str, str]:
    spec = build_spec(all_routes())
    return {SPEC_NAME: render_yaml(spec), HTML_NAME: render_html(spec)}


def write(output_dir: Path) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files().items():
        (output_dir / name).write_text(text, encoding="utf-8")
        written.append(output_dir / name)
    return written
