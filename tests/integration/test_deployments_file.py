"""deployments/prefect.yaml: each deployment's recipe is its recipes/*.yaml, typed by the flow's
Recipe parameter; pools, schedule and entrypoints are sound; no credentials in the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from eto_core.config import Recipe, load_recipe
from infra.stack.deploy import work_pools

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
RECIPE_OF = {"eto-mini": "mini.yaml", "eto-default": "default.yaml", "eto-default-retrain": "default.yaml",
             "eto-baseline-default": "default.yaml"}
REPORTS = {"eto-compare"}
STACK_KEYS = {"storage", "tracking"}


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}


def test_each_deployment_carries_its_recipe_and_the_stack_settings() -> None:
    deployments = _deployments()
    assert set(deployments) == set(RECIPE_OF) | REPORTS
    assert deployments["eto-compare"]["parameters"]["mlflow_uri"] == "{{ $MLFLOW_TRACKING_URI }}"
    assert deployments["eto-baseline-default"]["parameters"]["method"] in ("best-of-n", "rft", "rft-eto", "eto-no-sft")
    for name, deployment in deployments.items():
        if name in REPORTS:
            continue
        raw = deployment["parameters"]["recipe"]
        assert raw["storage"] == {"root": "{{ $ETO_ARTIFACT_ROOT }}", "s3_endpoint_url": "{{ $ETO_S3_ENDPOINT_URL }}"}
        assert raw["tracking"] == {"mlflow_uri": "{{ $MLFLOW_TRACKING_URI }}"}
        deployed = Recipe.model_validate(raw).model_dump(exclude=STACK_KEYS)
        from_file = load_recipe(ROOT / "recipes" / RECIPE_OF[name]).model_dump(exclude=STACK_KEYS)
        assert deployed == from_file, f"{name} drifted from recipes/{RECIPE_OF[name]}"


def test_entrypoints_pools_and_schedule() -> None:
    pools = {p["name"]: p for p in work_pools(PREFECT_FILE)}
    assert pools == {"eto-process": pools["eto-process"]} and pools["eto-process"]["type"] == "process"
    for deployment in _deployments().values():
        path, fn = deployment["entrypoint"].split(":")
        assert (ROOT / path).is_file() and f"def {fn}(" in (ROOT / path).read_text()
        assert deployment["work_pool"]["name"] in pools
    retrain = _deployments()["eto-default-retrain"]
    assert [s["cron"] for s in retrain["schedules"]] == ["0 3 * * 1"]


def test_no_credentials_in_the_file() -> None:
    text = PREFECT_FILE.read_text()
    assert not re.search(r"(?i)(aws_access_key_id|aws_secret_access_key|secret_key|password)\s*:", text)


def test_the_flow_parameter_schema_is_the_typed_recipe() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import eto_pipeline

    schema = parameter_schema(eto_pipeline).model_dump()
    recipe = schema["definitions"]["Recipe"]["properties"]
    assert {"iterations", "seed", "env", "dpo", "storage", "tracking"} <= set(recipe)
    assert schema["definitions"]["DPOSettings"]["properties"]["beta"]["type"] == "number"
