"""The app's API, as `gradio_client` sees it: every button is a named public endpoint, and the events that only
follow the page (a click on a heatmap or the gallery, a control's change that redraws a figure or marks results
stale, a step chained after another) are private glue that needs the page's own state. docs/explorer.md lists
the endpoints; these tests hold that list to the app."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "explorer.md"


@pytest.fixture(scope="module")
def events(page_config) -> list[tuple[dict, list[tuple[str | None, str]]]]:
    """Each event's config, with its triggers as (component type, event name); a chained step's type is None."""
    types = {component["id"]: component["type"] for component in page_config["components"]}
    return [
        (event, [(types.get(target), name) for target, name in event["targets"]])
        for event in page_config["dependencies"]
    ]


def test_every_button_is_a_named_public_endpoint(events):
    buttons = [event for event, triggers in events if ("button", "click") in triggers]
    assert len(buttons) >= 15
    for event in buttons:
        assert event["api_visibility"] == "public", event["api_name"]
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", event["api_name"]), event["api_name"]


def test_a_private_event_is_never_a_buttons_click(events):
    private = [(event, triggers) for event, triggers in events if event["api_visibility"] != "public"]
    assert len(private) >= 20  # the redraws, the stale marks, the previews
    for event, triggers in private:
        assert ("button", "click") not in triggers, (event["api_name"], triggers)


def test_the_documented_endpoints_are_the_public_ones(events):
    public = {event["api_name"] for event, _ in events if event["api_visibility"] == "public"}
    paragraph = DOC.read_text().split("<!-- endpoints -->")[1]
    documented = set(re.findall(r"`/(\w+)`", paragraph))
    assert documented == public
