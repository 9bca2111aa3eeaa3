"""The Kubernetes manifests in jobs/kubernetes validate (strict) against every minor version
1.27-1.35 whose schema kubernetes-validate ships, offline; and they say what they should."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kv_utils  # noqa: E402

MANIFESTS = Path(__file__).resolve().parent.parent / "jobs" / "kubernetes"
# The oldest Kubernetes each manifest is meant for (see the comment at the top of each).
OLDEST = {"cronjob.yaml": 27, "secret.example.yaml": 27, "fleet-cronjob.yaml": 29}
SHIPPED = {kv_utils.major_minor(v) for v in kv_utils.all_versions()}
VERSIONS = [f"1.{minor}" for minor in range(27, 36) if f"1.{minor}" in SHIPPED]


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text(encoding="utf-8")) if d]


def test_every_manifest_is_listed_and_every_version_is_shipped() -> None:
    assert {p.name for p in MANIFESTS.glob("*.yaml")} == set(OLDEST)
    # 1.27..1.35 all present in the installed kubernetes-validate; a version dropped from
    # it would otherwise go untested without anyone noticing.
    assert [f"1.{m}" for m in range(27, 36)] == VERSIONS, sorted(SHIPPED)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(OLDEST))
def test_manifest_validates_strictly(name: str, version: str) -> None:
    if int(version.split(".")[1]) < OLDEST[name]:
        pytest.skip(f"{name} needs Kubernetes 1.{OLDEST[name]}+")
    for doc in _documents(name):
        try:
            kubernetes_validate.validate(doc, f"{version}.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")


def test_the_old_cronjob_shape_is_refused_before_1_35() -> None:
    """The validator does catch what the issue found: a DisruptionTarget condition without status."""
    (cron,) = [d for d in _documents("cronjob.yaml") if d["kind"] == "CronJob"]
    rules = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    del rules[1]["onPodConditions"][0]["status"]
    with pytest.raises(kubernetes_validate.ValidationError, match="status"):
        kubernetes_validate.validate(cron, "1.34.0", strict=True)


def _job_spec(name: str) -> dict[str, Any]:
    (cron,) = [d for d in _documents(name) if d["kind"] == "CronJob"]
    return cron["spec"]["jobTemplate"]["spec"]


@pytest.mark.parametrize("name", ["cronjob.yaml", "fleet-cronjob.yaml"])
def test_jobs_clean_up_fit_memory_and_stop_on_non_retryable_codes(name: str) -> None:
    spec = _job_spec(name)
    assert spec["ttlSecondsAfterFinished"] > 0
    (container,) = spec["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    request = container["resources"]["requests"]["memory"]
    mib = {k: int(v.removesuffix("Mi")) for k, v in (("limit", limit), ("request", request))}
    # bench/RESULTS.md: 80-88 MB peak RSS at 1M accounts, 85 MB at 10M (SQLite). Headroom, but not
    # a 1 GiB reservation.
    assert 2 * 88 <= mib["limit"] <= 512 and 88 <= mib["request"] <= mib["limit"]
    exit_rule = spec["podFailurePolicy"]["rules"][0]
    assert exit_rule["onExitCodes"]["values"] == [2, 3, 4, 5]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--format json" in container["args"][0] and "--log-format json" in container["args"][0]


def test_fleet_job_is_indexed_and_picks_its_database_by_index() -> None:
    spec = _job_spec("fleet-cronjob.yaml")
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] >= 1 and spec["completions"] >= spec["parallelism"]
    (container,) = spec["template"]["spec"]["containers"]
    assert '--database-index "$JOB_COMPLETION_INDEX"' in container["args"][0]
