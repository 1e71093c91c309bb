"""A forked worker's os.environ becomes its torchrun environment by changing only what differs."""

from __future__ import annotations

import os

import pytest

from fakerun.worker.main import adopt_environment


def test_adopt_environment_sets_removes_and_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        monkeypatch.delenv(key)
    monkeypatch.setenv("KEPT", "same")
    monkeypatch.setenv("CHANGED", "old")
    monkeypatch.setenv("GONE", "x")
    adopt_environment({"KEPT": "same", "CHANGED": "new", "RANK": "3"})
    assert dict(os.environ) == {"KEPT": "same", "CHANGED": "new", "RANK": "3"}
    # putenv reached the C environment too, as a child process started now would see it
    assert os.popen("echo $RANK,$CHANGED,${GONE:-unset}").read().strip() == "3,new,unset"
