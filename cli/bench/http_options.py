"""``exitwise bench http``'s options, gathered by what they describe: the server and its images,
the load, and either the budget comparison (the default) or the deadline scenarios."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """The server under test and the images sent to it."""

    url: str
    api_key: str | None
    dataset: str | None  # test images of this data set [the one the model names]
    data_root: Path | None
    num_images: int  # distinct images to cycle through

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None


@dataclass(frozen=True)
class Load:
    """How hard and how long each workload runs."""

    levels: list[int]  # concurrent clients; the budget comparison runs each
    requests: int  # per workload and round (upper bound)
    duration_s: float  # per workload and round (upper bound); a scenario's runs each last this
    rounds: int
    budgets: str | None  # comma list of MFLOPs budgets or exitM
    client_cpus: str | None  # CPUs the client is pinned to


@dataclass(frozen=True)
class BudgetComparison:
    """The default run: every budget against the last exit, with the Python client or wrk."""

    client: str  # python or wrk
    images_per_request: int
    images_dir: Path | None  # send these files instead of a data set's test images
    oracle: Path | None  # `bench engine --json` output: adds oracle efficiency


@dataclass(frozen=True)
class Overload:
    """Open-loop arrivals at multiples of the last exit's capacity, degradation off and on, and
    deadline_policy=strict at the highest."""

    multiples: str  # comma list, e.g. 1,2,4
    deadline_ms: float  # the requests' deadline_ms
    figure: Path | None  # write the PNG figure here


@dataclass(frozen=True)
class Deadlines:
    """The deadline sweep: open-loop arrivals with each deadline_ms at each load."""

    deadlines_ms: str  # comma list, e.g. 5,10,20,50
    loads: str  # comma list of multiples of the last exit's capacity, e.g. 0.5,0.9


@dataclass(frozen=True)
class Scenarios:
    """The deadline scenarios, instead of the budget comparison when either is given."""

    overload: Overload | None
    deadlines: Deadlines | None

    @property
    def chosen(self) -> bool:
        return self.overload is not None or self.deadlines is not None


@dataclass(frozen=True)
class Report:
    """What a run prints (a markdown table) and writes with ``--json``."""

    table: str
    result: dict[str, Any]
