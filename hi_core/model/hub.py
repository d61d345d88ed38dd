"""Is a Hub id worth loading? Answered in seconds, before transformers tries.

transformers retries an unreachable or unknown Hub id with back-off: 25-30 s before it says so (a
visitor of the app waits that long for a typo). `check_hub_model` answers first: a model already in the
local Hugging Face cache passes at once; with `HF_HUB_OFFLINE` set, or when the Hub's host does not answer
within `TIMEOUT_S`, it says "no network"; a repository the Hub does not have is named as such, and that miss
is remembered for `MISS_TTL_S` (per process, at most `MAX_MISSES` ids), so asking again costs nothing.
Anything else (a gated model, an unexpected reply) is left to transformers, which says what it needs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from urllib.parse import urlparse

from ..base.errors import InputError

logger = logging.getLogger(__name__)

TIMEOUT_S = 3.0  # to reach the Hub, and for its answer about the repository
MISS_TTL_S = 600.0
MAX_MISSES = 256
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class _Misses:
    """Hub ids found missing (or unreachable), with why and when; bounded, thread-safe."""

    def __init__(self) -> None:
        self._misses: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, repo_id: str) -> str | None:
        with self._lock:
            miss = self._misses.get(repo_id)
            if miss is None or time.monotonic() - miss[0] > MISS_TTL_S:
                self._misses.pop(repo_id, None)
                return None
            return miss[1]

    def add(self, repo_id: str, why: str) -> None:
        with self._lock:
            self._misses[repo_id] = (time.monotonic(), why)
            self._misses.move_to_end(repo_id)
            while len(self._misses) > MAX_MISSES:
                self._misses.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._misses.clear()


MISSES = _Misses()


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (offline mode, or its host not answering in time); None if it answers."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "no network: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE is set)"
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None  # through a proxy: a direct connection says nothing; the repository check below will tell
    endpoint = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=TIMEOUT_S):
            return None
    except OSError as error:  # no DNS, refused, unreachable, timed out
        return f"no network: the Hugging Face Hub ({endpoint.hostname}) did not answer within {TIMEOUT_S:g} s ({error})"


def check_hub_model(repo_id: str) -> None:
    """An InputError within about `2 * TIMEOUT_S` if `repo_id` cannot be loaded from the Hub (see the module's
    docstring); returns when it is cached, exists, or the answer is unclear."""
    if _cached(repo_id):
        return
    known = MISSES.get(repo_id)
    if known is not None:
        raise InputError(known)
    unreachable = _hub_unreachable()
    if unreachable is not None:  # not remembered: the network may come back
        raise InputError(
            f"could not load model {repo_id!r}: it is not in the local Hugging Face cache, and {unreachable}"
        )
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=TIMEOUT_S)
    except GatedRepoError:  # exists; transformers says what a gated model needs
        return
    except RepositoryNotFoundError:
        why = f"there is no model {repo_id!r} on the Hugging Face Hub (or it is private): check the owner/name"
        MISSES.add(repo_id, why)
        raise InputError(why) from None
    except Exception as error:
        logger.info("Hub check of %s inconclusive (%s); loading it as usual", repo_id, error)
