"""Reading the app's events through gradio_client by name: inputs by their parameter names (keyword
arguments), outputs by their components' elem_id (`outputs(client, "/analyze", values)["summary"]`)."""

from __future__ import annotations

from typing import Any

UNCHANGED = {"__type__": "update"}  # what an output left as it was comes back as


def output_ids(client, api_name: str) -> list[str]:
    """The elem_ids of an event's outputs, in the order the client returns them (State, Button and Tabs outputs are not returned)."""
    config = client.config
    components = {component["id"]: component for component in config["components"]}
    event = next(d for d in config["dependencies"] if d.get("api_name") == api_name.lstrip("/"))
    shown = [components[i] for i in event["outputs"] if not components[i].get("skip_api")]  # State, Button, Tabs
    return [component["props"].get("elem_id") or f"{component['type']}-{component['id']}" for component in shown]


def outputs(client, api_name: str, values: Any) -> dict[str, Any]:
    ids = output_ids(client, api_name)
    values = values if len(ids) != 1 else (values,)
    return dict(zip(ids, values, strict=True))


def predict(client, api_name: str, **inputs: Any) -> dict[str, Any]:
    return outputs(client, api_name, client.predict(api_name=api_name, **inputs))
