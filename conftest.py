"""Doctests: every `>>>` example in `batching/` and `cli/` runs as a test.

`--doctest-modules` (pyproject's addopts) imports each module of the package and
runs its examples; one that cannot run here (it needs a model, a GPU, a server, a
Ray cluster) is marked `# doctest: +SKIP` where it stands. Each example runs in a
fresh temporary directory, so it may write `out.jsonl` as a user would.
"""

from __future__ import annotations

import pytest

# Both import Ray at module level: importing them to collect their examples would
# load Ray (about a second) into every test run, and fail where the optional `ray`
# extra is not installed. Their examples need a Ray cluster and are marked +SKIP.
collect_ignore = ["batching/ray_replica.py", "batching/ray_source.py"]


@pytest.fixture(autouse=True)
def doctests_run_in_a_temporary_directory(request: pytest.FixtureRequest) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        monkeypatch.chdir(request.getfixturevalue("tmp_path"))
