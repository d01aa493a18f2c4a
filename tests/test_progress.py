"""The progress artifact helper under the temporary Prefect API: throttled, never backwards, 100 at the end."""

from __future__ import annotations

import pytest


def _read(artifact_id) -> tuple[float, str | None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))
    return float(artifact.data), artifact.description


@pytest.mark.parametrize(("done", "total", "expected"), [(0, 4, 0.0), (1, 4, 25.0), (4, 4, 100.0), (9, 4, 100.0),
                                                       (0, 0, 100.0)])
def test_percent(done: int, total: int, expected: float):
    from tasks.progress import percent

    assert percent(done, total) == expected


def test_progress_artifact_is_throttled_monotonic_and_finishes_at_100(prefect_api):
    from prefect import flow

    from tasks.progress import Progress

    now = [0.0]

    @flow
    def work() -> list[tuple[float, str | None]]:
        bar = Progress("test-progress", "files of a test batch", every=10.0, clock=lambda: now[0])
        seen = [_read(bar.artifact_id)]
        bar(1, 4)  # too soon after the last update: not sent
        seen.append(_read(bar.artifact_id))
        now[0] = 11.0
        bar(2, 4)
        seen.append(_read(bar.artifact_id))
        now[0] = 30.0
        bar(1, 4)  # a restarted try: the bar never goes back
        seen.append(_read(bar.artifact_id))
        bar(4, 4)  # the last step is always sent
        seen.append(_read(bar.artifact_id))
        bar.finish("done: 4 files")
        seen.append(_read(bar.artifact_id))
        return seen

    values = work()
    assert [v for v, _ in values] == [0.0, 0.0, 50.0, 50.0, 100.0, 100.0]
    assert values[0][1] == "files of a test batch" and values[-1][1] == "done: 4 files"
