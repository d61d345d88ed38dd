"""`hi_core.model.hub.check_hub_model`: a Hub id that cannot load is answered in seconds, offline at once, a missing
repository remembered. No test touches the network: the connection and the Hub's answer are replaced."""

from __future__ import annotations

import socket
import time

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from hi_core.model import hub
from hi_core.base.errors import InputError
from hi_core.model.loading import LoadConfig, load_model


@pytest.fixture
def online(monkeypatch):
    """The Hub reachable (a connection that opens), not offline, nothing cached, no miss remembered; returns the
    list of repository lookups made."""
    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    lookups: list[str] = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: Connection())
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    for name in hub._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    hub.MISSES.clear()
    yield lookups
    hub.MISSES.clear()


def _answer(monkeypatch, lookups: list[str], error: Exception | None) -> None:
    def model_info(repo_id, timeout=None):
        lookups.append(repo_id)
        assert timeout == hub.TIMEOUT_S
        if error is not None:
            raise error

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)


def _not_found(cls=RepositoryNotFoundError):
    return cls.__new__(cls)  # the library's own error, without an HTTP response to build it from


def test_offline_says_no_network_at_once(monkeypatch, online):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _answer(monkeypatch, online, None)
    started = time.monotonic()
    with pytest.raises(InputError, match="not in the local Hugging Face cache, and no network: .*HF_HUB_OFFLINE"):
        load_model(LoadConfig(model="owner/absent-model"))
    assert time.monotonic() - started < 1 and online == []  # no lookup, no transformers retries


def test_an_unreachable_hub_says_no_network(monkeypatch, online):
    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    _answer(monkeypatch, online, None)
    with pytest.raises(InputError, match=r"no network: the Hugging Face Hub \(huggingface.co\) did not answer within 3 s"):
        hub.check_hub_model("owner/name")
    assert online == []


def test_a_missing_repository_is_named_and_remembered(monkeypatch, online):
    _answer(monkeypatch, online, _not_found())
    for _ in range(3):
        with pytest.raises(InputError, match="there is no model 'owner/typo' on the Hugging Face Hub"):
            hub.check_hub_model("owner/typo")
    assert online == ["owner/typo"]  # asked once; the miss answers the next two


@pytest.mark.parametrize("error", [None, "gated", "other"])
def test_an_existing_gated_or_unclear_repository_goes_on_to_load(monkeypatch, online, error):
    answers = {None: None, "gated": _not_found(GatedRepoError), "other": RuntimeError("HTTP 500")}
    _answer(monkeypatch, online, answers[error])
    hub.check_hub_model("owner/name")  # no InputError: transformers loads it (and says what a gated model needs)
    assert online == ["owner/name"]


def test_a_cached_model_is_not_looked_up(monkeypatch, online):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: f"/cache/{repo_id}/{filename}")
    _answer(monkeypatch, online, _not_found())
    hub.check_hub_model("owner/cached")
    assert online == []


def test_the_misses_are_bounded(online):
    for index in range(hub.MAX_MISSES + 10):
        hub.MISSES.add(f"owner/m{index}", "missing")
    assert hub.MISSES.get("owner/m0") is None and hub.MISSES.get(f"owner/m{hub.MAX_MISSES + 9}") == "missing"
