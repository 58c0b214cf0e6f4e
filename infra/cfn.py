"""What infra/generate.py (the query side) and infra/disputes.py (SPEC §8) both build with: CloudFormation
intrinsic functions, logical ids, the registries and the stages' environment, the metric namespace.

Both import this module and nothing of each other's but the one call generate.py makes to extend its
template with the dispute feature, so the two never import each other.
"""
from __future__ import annotations

import json
import os
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "YiZhengTongCha"


def sub(text: str) -> dict[str, str]:
    return {"Fn::Sub": text}


def get_att(resource: str, attribute: str = "Arn") -> dict[str, list[str]]:
    return {"Fn::GetAtt": [resource, attribute]}


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def logical(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("/", "_").replace("-", "_").split("_"))


def stage_env(stage: str) -> dict[str, str]:
    with open(os.path.join(ROOT, ".chalice", "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return {**config.get("environment_variables", {}),
            **config["stages"][stage].get("environment_variables", {})}


def registry(kind: str) -> list[dict[str, Any]]:
    with open(os.path.join(ROOT, "chalicelib", "data", f"{kind}.json"), encoding="utf-8") as fh:
        return list(json.load(fh)[kind])


def table_logical(var: str) -> str:
    return logical(var.removesuffix("_TABLE").lower()) + "Table"


def metric(name: str, stat: str = "Sum", **dims: Any) -> list[Any]:
    line: list[Any] = [NAMESPACE, name, "service", "yizhengtongcha"]
    for key, value in dims.items():
        line += [key, value]
    return line + [{"stat": stat}]
