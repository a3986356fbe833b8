"""Request parameters shared by REST v1 (query string or form fields) and v2 (``parameters``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameterError

NAMES = (
    "budget_mflops",
    "max_exit",
    "top_k",
    "timeout_ms",
    "budget_control",
    "deadline_ms",
    "degrade",
    "deadline_policy",
)


@dataclass(frozen=True)
class RequestParams:
    budget_mflops: float | None = None
    max_exit: int | None = None
    top_k: int | None = None
    timeout_s: float | None = None  # the client's deadline, if shorter than the server's
    budget_control: bool | None = None  # False: this request keeps the calibrated thresholds
    deadline_s: float | None = None  # deadline_ms: answer by then from the deepest exit reached
    degrade: bool | None = None  # may be served at a cheaper point under load (default: setting)
    # What a deadline_ms that not even exit 1 is forecast to meet gets: "late" (answered from
    # exit 1, saying so) or "strict" (a 503 with Retry-After at once).
    deadline_policy: str = "late"


def _number(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise InvalidParameterError(f"{name} must be a number, not {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):  # overflow: a JSON integer of 400 digits
        raise InvalidParameterError(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise InvalidParameterError(f"{name} must be a finite number, not {raw!r}")
    return value


def _integer(name: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise InvalidParameterError(f"{name} must be an integer, not {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    text = str(raw).strip()
    try:
        return int(text)
    except ValueError:
        pass
    # "2.0" is the integer 2, as the JSON number 2.0 is: v1 (text) and v2 (JSON) take the same.
    with contextlib.suppress(ValueError, OverflowError):
        if (value := float(text)).is_integer():
            return int(value)
    raise InvalidParameterError(f"{name} must be an integer, not {raw!r}")


_SWITCH = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _switch(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = _SWITCH.get(str(raw).strip().lower())
    if value is None:
        raise InvalidParameterError(f"{name} must be on or off (true or false), not {raw!r}")
    return value


def declines(raw: str | None) -> bool:
    """Whether a ``degrade`` value says no, for a check made before the parameters are read
    (a value that does not parse says nothing here: it is refused when they are)."""
    return raw is not None and _SWITCH.get(raw.strip().lower()) is False


def parse_params(
    values: Mapping[str, Any], timeout_key: str = "timeout_ms", timeout_per_s: float = 1e3
) -> RequestParams:
    """Typed parameters from strings (query, form) or JSON values; "" counts as absent.

    The client's timeout is ``values[timeout_key]`` in units of which ``timeout_per_s`` make a
    second (REST v1: ``timeout_ms``; v2: Triton's ``timeout`` in microseconds). Divided, as
    ``deadline_ms`` is: the same time in either unit is the same float, so a deadline equal to
    the timeout is one (50,000 us times 1e-6 is 0.049999999999999996 s, under 50 ms / 1000).
    """

    def get(name: str) -> Any:
        raw = values.get(name)
        return None if raw is None or (isinstance(raw, str) and not raw.strip()) else raw

    budget, max_exit, top_k = get("budget_mflops"), get("max_exit"), get("top_k")
    control, deadline, degrade = get("budget_control"), get("deadline_ms"), get("degrade")
    policy = str(get("deadline_policy") or "late").strip().lower()
    if policy not in ("late", "strict"):
        raise InvalidParameterError(f"deadline_policy must be late or strict, not {policy!r}")
    deadline_s = None
    if deadline is not None:
        deadline_s = _number("deadline_ms", deadline) / 1000
        if deadline_s <= 0:
            raise InvalidParameterError(f"deadline_ms must be positive, not {deadline!r}")
    timeout = get(timeout_key)
    timeout_s = None
    if timeout is not None:
        timeout_s = _number(timeout_key, timeout) / timeout_per_s
        if timeout_s <= 0:
            raise InvalidParameterError(f"{timeout_key} must be positive, not {timeout!r}")
    return RequestParams(
        budget_mflops=None if budget is None else _number("budget_mflops", budget),
        max_exit=None if max_exit is None else _integer("max_exit", max_exit),
        top_k=None if top_k is None else _integer("top_k", top_k),
        timeout_s=timeout_s,
        budget_control=None if control is None else _switch("budget_control", control),
        deadline_s=deadline_s,
        degrade=None if degrade is None else _switch("degrade", degrade),
        deadline_policy=policy,
    )


# What a v2 request's top-level ``parameters`` may hold: ours, less top_k (v2's outputs are
# fixed) and timeout_ms (v2 has the protocol's ``timeout``, in microseconds), and the Open
# Inference Protocol's own (what tritonclient sends): outputs and sequences, which a stateless
# classifier accepts and has no use for.
V2_NAMES = (
    *(n for n in NAMES if n not in ("top_k", "timeout_ms")),
    "timeout",
    "binary_data_output",
    "priority",
    "sequence_id",
    "sequence_start",
    "sequence_end",
)


def check_v2(parameters: Mapping[str, Any]) -> None:
    """A v2 request's ``parameters``: unknown names are refused, as in v1 (a typo such as
    ``budget=5`` must not silently serve the default)."""
    for name in parameters:
        if name not in V2_NAMES:
            known = ", ".join(V2_NAMES)
            raise InvalidParameterError(f"unknown parameter {name!r}; known: {known}")


def merge_fields(
    query: Iterable[tuple[str, str]], form: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """Query and form fields together; unknown names and one name given twice are refused."""
    merged: dict[str, str] = {}
    for source, fields in (("query", query), ("form", form)):
        for name, value in fields:
            if name not in NAMES:
                raise InvalidParameterError(
                    f"unknown {source} parameter {name!r}; known: {', '.join(NAMES)}"
                )
            if not value.strip():  # "" counts as absent (parse_params), here too
                continue
            if name in merged and not _same(name, merged[name], value):
                raise InvalidParameterError(f"{name} is given twice with different values")
            merged[name] = value
    return merged


def _same(name: str, a: str, b: str) -> bool:
    """Whether two values of parameter ``name`` say the same, parsed ("1.5" and "1.50", "on" and
    "true"). A value that does not parse is refused for what is wrong with it: compared as
    written, ``deadline_ms=-5`` in the query and ``-5.0`` in the form were "given twice with
    different values", which hid the mistake."""
    return parse_params({name: a}) == parse_params({name: b})
