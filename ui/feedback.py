"""How the page tells a visitor what happened: a message beside the control that failed, a banner over
results that no longer match the inputs, and one log line per user error on the server.

The stale banner follows the order in which the person edited and ran, not the order in which the server
happens to handle their events: `EditCount` numbers each edit in the browser before anything is sent.

A raised `gr.Error` marks every output of its event with an error badge and leaves the message only in
a toast; so handlers do not raise for user mistakes. `reports_input_errors` turns an `InputError` into
an update of the event's message component alone (the results keep their last good values), plus a
toast, and logs it as one line (no traceback: it is the visitor's mistake, not the server's).

Gradio checks some inputs itself before any handler runs (a number below its minimum, a slider out of
range, a value not among a dropdown's choices, an upload over the image editor's limits) and raises
`gr.Error`, with a traceback in the log. `components.refuse_in_handler` makes such a component hand the handler a
`Refused` value instead, which `reports_input_errors` reports like any other input error.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from hi_core.base.errors import InputError

from .settings import scrub_paths

log = logging.getLogger("hi_explorer")


def problem(text: str) -> str:
    """Markdown (with inline HTML: the app sets no CSS) for a message about a failed action."""
    return (
        f'<div style="border-left: 4px solid #d62728; background: #fdecea; color: #611a15; padding: 6px 10px; '
        f'border-radius: 4px">⚠ {html.escape(text, quote=False)}</div>'
    )


def notice(text: str) -> str:
    """Markdown for a note about the results shown (e.g. that they are stale)."""
    return (
        f'<div style="border-left: 4px solid #e0a000; background: #fff6db; color: #5c4400; padding: 6px 10px; '
        f'border-radius: 4px">{text}</div>'
    )


MAX_MESSAGE = 500  # characters of a message shown and logged: Gradio's own refusals quote the value sent, of any size


def shortened(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text`, or its first `limit` characters and '…' (the length said) when longer."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _shown(error: InputError, action: str) -> str:
    message = scrub_paths(shortened(str(error)))
    log.warning("input error in %s: %s", action, message)
    gr.Warning(message)
    return message


@dataclass(frozen=True)
class Refused:
    """An input its component's own checks refused, with what to tell the visitor."""

    message: str


def _check_refused(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Refused):
            raise InputError(value.message)


def reports_input_errors(message: str):
    """Decorator for a tab's handler method that returns (or yields) `{component: value}` updates: an
    `InputError` (or a `Refused` argument) becomes `{self.<message>: the error}` and nothing else changes."""

    def decorate(method):
        if inspect.isgeneratorfunction(method):  # a handler that streams updates

            @functools.wraps(method)
            def generator(self, *args, **kwargs):
                try:
                    _check_refused(args, kwargs)
                    yield from method(self, *args, **kwargs)
                except InputError as error:
                    yield {getattr(self, message): problem(_shown(error, method.__name__))}

            return generator

        @functools.wraps(method)  # keeps the signature: gradio reads gr.Progress / gr.SelectData / names from it
        def wrapper(self, *args, **kwargs):
            try:
                _check_refused(args, kwargs)
                return method(self, *args, **kwargs)
            except InputError as error:
                return {getattr(self, message): problem(_shown(error, method.__name__))}

        return wrapper

    return decorate


class EditCount:
    """How many times the person has edited a tab's inputs, counted in the browser (a hidden number).

    An edit's event can reach the server after a run pressed later has finished (each event is its own
    request), so "mark the results stale" must not be decided by arrival: a late edit would mark fresh
    results stale. The browser numbers each edit in a `js` step before its request leaves; a run records the
    number it started from in its session, and only an edit numbered above it may mark the results stale."""

    def __init__(self, elem_id: str):
        self.count = gr.Number(0, precision=0, visible=False, elem_id=elem_id)

    def marks_stale(
        self,
        events,
        handler,
        state: gr.State,
        stale: gr.Markdown,
        inputs: Sequence = (),
        clears: gr.Markdown | None = None,
    ) -> None:
        """On each of `events`: count the edit, then `handler(session, count, *inputs)` updates `stale`; `clears`
        (a message about the last run, e.g. why Analyze failed) is emptied: it was about the inputs before this edit."""
        count = "(count) => (count || 0) + 1" if clears is None else "(count) => [(count || 0) + 1, '']"
        for event in events:
            event(
                None,
                [self.count],
                [self.count] if clears is None else [self.count, clears],
                js=count,
                api_visibility="private",
                show_progress="hidden",
                queue=False,
            ).then(handler, [state, self.count, *inputs], [stale], api_visibility="private", show_progress="hidden")

    @staticmethod
    def edited_since(session: Any, count: float | None) -> bool:
        """Whether an edit numbered `count` came after the run that made `session` (whose `edits` it started from)."""
        return session is not None and int(count or 0) > session.edits
