"""A Dask operator manifest checked against the operator's own CustomResourceDefinition, without a cluster.

``crd_problems(manifest) -> [str]``: the schema errors the API server would reject (jsonschema on the CRD's
``openAPIV3Schema``, from the Helm chart dask-kubernetes ships), and the fields it would silently drop (not in the
schema: a misspelt ``nodeselector`` is pruned on apply, and the workers land on CPU nodes). Empty when the
manifest is one the installed operator version accepts as written.
"""

from __future__ import annotations

from pathlib import Path


def crd_file(kind: str = "DaskCluster") -> Path:
    """The CRD of ``kind`` in the installed dask-kubernetes' Helm chart."""
    import dask_kubernetes

    return (
        Path(dask_kubernetes.__file__).parent
        / "operator"
        / "deployment"
        / "helm"
        / "dask-kubernetes-operator"
        / "crds"
        / f"{kind.lower()}.yaml"
    )


def crd_problems(manifest: dict) -> list[str]:
    import jsonschema
    import yaml

    path = crd_file(manifest.get("kind", "DaskCluster"))
    if not path.is_file():
        return [f"kind {manifest.get('kind')!r}: the installed dask-kubernetes has no CRD for it ({path.name})"]
    crd = yaml.safe_load(path.read_text())
    group = crd["spec"]["group"]
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    api_group, _, version = str(manifest.get("apiVersion", "")).partition("/")
    if api_group != group or version not in versions:
        return [
            f"apiVersion {manifest.get('apiVersion')!r}: the CRD serves {', '.join(f'{group}/{v}' for v in versions)}"
        ]
    schema = versions[version]["schema"]["openAPIV3Schema"]
    found = [
        f"{_where(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(manifest)
    ]
    return found + [
        f"{where}: not in the CRD (the API server would drop it)" for where in _pruned(manifest, schema, [])
    ]


def _pruned(value, schema: dict, at: list) -> list[str]:
    """Paths of fields the API server prunes: object keys that a structural schema does not declare."""
    if not isinstance(schema, dict):
        return []
    out = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields") or at in ([], ["metadata"]) and props is None
        for k, v in value.items():
            if props is not None and k in props:
                out += _pruned(v, props[k], at + [k])
            elif isinstance(extra, dict):
                out += _pruned(v, extra, at + [k])
            elif not keep and not (at == [] and k in ("apiVersion", "kind", "metadata")):
                out.append(_where(at + [k]))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += _pruned(v, schema["items"], at + [i])
    return out


def _where(path) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path) or "(top)"
