"""Turn upstream CRDs and Kubernetes schemas into kubeconform's standalone JSON schemas.

Used by fetch-schemas.sh. Two inputs, one output layout under knative/schemas/:

- CRDs (``kind: CustomResourceDefinition``): every served version's
  openAPIV3Schema becomes ``crds/<group>/<kind>_<version>.json``.
- Kubernetes built-in kinds, from the JSON schemas of the kubernetes-validate
  wheel (``<kind>-<group>-<version>.json`` referring to ``_definitions.json``):
  the ``$ref`` s are inlined so each file stands alone, as
  ``kubernetes/<kind>-<group>-<version>.json``.

Strictness is what a real API server would enforce and a little more: unknown
fields fail (``additionalProperties: false`` wherever a schema lists
properties and does not say ``x-kubernetes-preserve-unknown-fields``), and the
``metadata`` of a custom resource gets the full ObjectMeta schema (a CRD leaves
it open, so an annotation value written as a YAML number would otherwise pass).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
# Keywords whose values are schemas (dicts) or lists of schemas.
SUBSCHEMA_KEYS = ("items", "additionalProperties", "not")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


def inline_refs(node: Any, defs: dict[str, Any], stack: tuple[str, ...] = ()) -> Any:
    """Copy of `node` with every ``#/$defs/NAME`` reference replaced by its definition."""
    if isinstance(node, list):
        return [inline_refs(item, defs, stack) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in stack:  # recursive type: leave this level unchecked
            return {"description": f"(recursive {name})"}
        target = inline_refs(defs[name], defs, (*stack, name))
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **inline_refs(extra, defs, stack)} if extra else target
    return {key: inline_refs(value, defs, stack) for key, value in node.items()}


def strict(node: Any) -> Any:
    """Close open objects and spell out the Kubernetes extensions in plain JSON Schema."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "oneOf" not in out:
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
    for key in SUBSCHEMA_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    # anyOf/allOf branches of a structural schema only add constraints (required,
    # enums) to the properties declared above them: they are not closed.
    return out


def crd_documents(paths: Iterable[Path]) -> Iterable[dict[str, Any]]:
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            for doc in yaml.safe_load_all(fh):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


def crd_schemas(crd: dict[str, Any], object_meta: dict[str, Any]) -> dict[str, Any]:
    """Relative path -> schema, one per served version of one CRD."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out: dict[str, Any] = {}
    for version in spec["versions"]:
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if not version.get("served") or schema is None:
            continue
        converted = strict(copy.deepcopy(schema))
        props = converted.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        if not converted.get("x-kubernetes-preserve-unknown-fields"):
            props["metadata"] = object_meta
        converted.setdefault("required", [])
        converted["required"] = sorted({*converted["required"], "apiVersion", "kind"})
        converted["$schema"] = DRAFT
        converted["description"] = (
            f"{kind} ({group}/{version['name']}) from its CustomResourceDefinition"
        )
        out[f"crds/{group}/{kind.lower()}_{version['name']}.json"] = converted
    return out


def kubernetes_schemas(schema_dir: Path, names: Iterable[str]) -> dict[str, Any]:
    """Relative path -> standalone schema for the named kubernetes-validate files."""
    defs = json.loads((schema_dir / "_definitions.json").read_text(encoding="utf-8"))["$defs"]
    out: dict[str, Any] = {}
    for name in names:
        raw = json.loads((schema_dir / f"{name}.json").read_text(encoding="utf-8"))
        raw.pop("$id", None)
        out[f"kubernetes/{name}.json"] = inline_refs(raw, defs)
    return out


def object_meta_schema(schema_dir: Path) -> dict[str, Any]:
    defs = json.loads((schema_dir / "_definitions.json").read_text(encoding="utf-8"))["$defs"]
    return inline_refs({"$ref": f"#/$defs/{OBJECT_META}"}, defs)  # type: ignore[no-any-return]


def write(out_dir: Path, schemas: dict[str, Any]) -> None:
    for rel, schema in sorted(schemas.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--kubernetes-dir", type=Path, required=True,
                        help="kubernetes-validate's v<version>-local-strict directory")
    parser.add_argument("--kubernetes-kind", action="append", default=[],
                        help="built-in schema file name without .json, e.g. configmap-v1")
    parser.add_argument("crds", nargs="*", type=Path, help="YAML files holding CRDs")
    args = parser.parse_args(argv)

    meta = object_meta_schema(args.kubernetes_dir)
    schemas = kubernetes_schemas(args.kubernetes_dir, args.kubernetes_kind)
    for crd in crd_documents(args.crds):
        schemas.update(crd_schemas(crd, meta))
    write(args.out, schemas)
    print(f"wrote {len(schemas)} schemas to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
