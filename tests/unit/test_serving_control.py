"""Budget control in closed loop on synthetic traffic: calibration's own table and solver, the
core exit rule, and confidence streams whose distribution changes (a step at any offset, a
ramp, beyond the bounds, back to clean); plans admitted before a move, and images stopped by a
deadline, do not steer it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.control_table import control_table
from calibration.solver import BudgetSolver
from calibration.synthetic import synthetic_scores
from exitwise.bundle import Calibration, OperatingPoint, SplitResult
from exitwise.policy import decide_exits
from serving.budget.control import BudgetControl
from serving.budget.controller import CALIBRATED, BudgetController, ControlSettings, Move
from serving.budget.resolve import BudgetResolver
from serving.budget.table import ControlTable, Traffic, estimate, hazards_of

COSTS = np.array([1.63, 3.80, 7.80, 12.10])
K = len(COSTS)
HELD = synthetic_scores(5000, K, seed=0).confidence
SOLVER = BudgetSolver(HELD, COSTS)


@pytest.fixture(scope="module")
def table() -> ControlTable:
    rows = control_table(SOLVER, COSTS)
    return ControlTable([r.mflops for r in rows], [r.threshold_array() for r in rows])


def point(target: float) -> OperatingPoint:
    """An operating point solved on the held-out split, as calibration writes it."""
    thresholds = SOLVER.solve(target).thresholds
    exits = decide_exits(HELD, thresholds)
    fractions = np.bincount(exits, minlength=K) / len(exits)
    result = SplitResult(
        accuracy=90, mflops=float(COSTS[exits].mean()), exit_fractions=fractions.tolist(),
        images=len(exits),
    )  # fmt: skip
    listed = [None if math.isinf(t) else float(t) for t in thresholds[:-1]] + [None]
    return OperatingPoint(name=f"p{target}", q=1.0, thresholds=listed, heldout=result)


def traffic(n: int, seed: int, strength: float = 0.0) -> np.ndarray:
    """Images like the held-out split's (a fresh sample), harder with ``strength`` > 0: every
    confidence pulled towards chance (what noise, blur and low contrast do)."""
    conf = synthetic_scores(n, K, seed=seed).confidence
    return 0.1 + (conf - 0.1) * (1.0 - strength)


def served(conf: np.ndarray, thresholds: np.ndarray, cap: int = K - 1) -> Traffic:
    """What the engine records of images served with ``thresholds`` (stopped at ``cap`` by a
    deadline if not before)."""
    exits = np.minimum(decide_exits(conf, thresholds), cap)
    seen = np.arange(K)[None, :] <= exits[:, None]
    at = conf[np.arange(len(conf)), exits]
    censored = (exits == cap) & (cap < K - 1) & (at < thresholds[exits])
    return Traffic(np.where(seen, conf, np.nan), exits, censored)


def run(ctl: BudgetController, conf: np.ndarray, lag: int = 0) -> tuple[np.ndarray, list[int]]:
    """Serve ``conf`` in requests of 8 images, each observed ``lag`` requests after it was
    admitted (others are in flight meanwhile); per image its cost, and the row after each
    request."""
    costs = np.empty(len(conf))
    rows: list[int] = []
    pending: list[tuple[Traffic, int]] = []
    for i in range(0, len(conf), 8):
        t = served(conf[i : i + 8], ctl.thresholds_of(ctl.next_row()))  # as the server does
        costs[i : i + 8] = COSTS[t.reached]
        pending.append((t, ctl.epoch))
        if len(pending) > lag:
            ctl.observe(*pending.pop(0))
        rows.append(ctl.row)
    return costs, rows


def population(conf: np.ndarray, thresholds: np.ndarray) -> float:
    return float(COSTS[decide_exits(conf, thresholds)].mean())


def mixed(conf: np.ndarray, ctl: BudgetController) -> float:
    """What the controller serves costs on ``conf``: its row, and its share of the next."""
    cost = population(conf, ctl.thresholds())
    if ctl.share:
        cost += ctl.share * (population(conf, ctl.thresholds_of(ctl.row + 1)) - cost)
    return cost


@pytest.mark.parametrize("target", [3.0, 5.0, 8.0])
def test_held_out_like_traffic_leaves_the_calibrated_thresholds_alone(
    table: ControlTable, target: float
) -> None:
    ctl = BudgetController(point(target), COSTS, table)
    stream = HELD[np.random.default_rng(1).integers(0, len(HELD), 60_000)]
    costs, _ = run(ctl, stream)
    assert ctl.moves == 0 and ctl.row == CALIBRATED
    assert abs(costs.mean() / ctl.target - 1) < 0.02


@pytest.mark.parametrize("target", [3.0, 5.0, 8.0])
@pytest.mark.parametrize(("strength", "settle"), [(0.25, 2000), (0.5, 1000)])
def test_a_shift_at_any_offset_is_brought_back_within_three_percent(
    table: ControlTable, target: float, strength: float, settle: int
) -> None:
    shifted = traffic(8000, seed=3, strength=strength)
    for offset in (1000, 2987):  # the shift starts anywhere, not on a checkpoint
        ctl = BudgetController(point(target), COSTS, table)
        run(ctl, traffic(offset, seed=2))
        open_loop = population(shifted, ctl.thresholds())
        assert open_loop > 1.1 * ctl.target  # the shift hurts without control
        errors = []
        for start in range(0, 8000, 8):
            run(ctl, shifted[start : start + 8])
            errors.append(mixed(shifted, ctl) / ctl.target - 1)
        # What the thresholds served from ``settle`` images on cost on this traffic, on average
        # (exitwise bench drift --simulate gives the spread over many streams).
        assert abs(np.mean(errors[settle // 8 :])) < 0.03
        assert abs(errors[-1]) < 0.03
        assert ctl.row != CALIBRATED and ctl.budget < ctl.target


def test_back_to_clean_traffic_it_serves_the_calibrated_thresholds_again(
    table: ControlTable,
) -> None:
    p = point(5.0)
    ctl = BudgetController(p, COSTS, table)
    run(ctl, traffic(6000, seed=7, strength=0.4))
    assert ctl.moved and ctl.budget < 0.9 * ctl.target
    _, rows = run(ctl, traffic(2000, seed=8))
    assert ctl.row == CALIBRATED and not ctl.moved  # home, exactly
    np.testing.assert_array_equal(ctl.thresholds(), p.threshold_array())
    assert ctl.budget == ctl.target
    home = rows.index(CALIBRATED)
    assert home * 8 < 1000  # within 1,000 clean images


@pytest.mark.parametrize("window", [1000, 4000])
def test_a_shift_seen_late_still_comes_home_soon_after_it_ends(
    table: ControlTable, window: int
) -> None:
    # A small shift is seen only after some 3,000 images; the controller moves, the shift
    # goes on a little, then the traffic is clean. The change it is still measuring began in
    # the shift, so the images since then never look clean; the last quarter of the window
    # does, soon. Also with the smallest window taken (a quarter of 800 was under the 250
    # images a check needs: home only after some 9,700 clean images; with 200, never).
    ctl = BudgetController(point(8.0), COSTS, table, ControlSettings(window=window))
    run(ctl, traffic(1000, seed=2))
    shifted = traffic(20_000, seed=3, strength=0.06)
    seen = 0
    while not ctl.moved:
        run(ctl, shifted[seen : seen + 8])
        seen += 8
    assert seen > 2000
    run(ctl, shifted[seen : seen + 500])
    _, rows = run(ctl, traffic(4000, seed=8))
    assert CALIBRATED in rows and rows.index(CALIBRATED) * 8 < 2000


def test_a_shift_just_begun_is_not_taken_for_clean_traffic(table: ControlTable) -> None:
    # Right after a large shift is seen, most of the last 1,000 images are still from before
    # it: they must not send the controller home. (At a cheap point most images leave at
    # exit 1 whatever the traffic, so 1,000 images mostly clean look clean.)
    ctl = BudgetController(point(2.0), COSTS, table)
    run(ctl, traffic(1500, seed=2))
    _, rows = run(ctl, traffic(4000, seed=3, strength=0.7))
    first = next(i for i, r in enumerate(rows) if r != CALIBRATED)
    assert first * 8 < 500 and CALIBRATED not in rows[first:]


def test_what_it_settles_on_does_not_cost_more_than_the_budget(table: ControlTable) -> None:
    # The promise is an average cost not above the budget: the base row is the dearest whose
    # estimate is within the target (not within the target plus the deadband), and the share of
    # the next row fills the rest.
    errors = []
    for target in (3.0, 4.0, 5.0, 6.0, 8.0):
        for strength in (0.2, 0.35, 0.5):
            ctl = BudgetController(point(target), COSTS, table)
            run(ctl, traffic(1500, seed=2))
            shifted = traffic(12_000, seed=3, strength=strength)
            run(ctl, shifted)
            errors.append(mixed(shifted, ctl) / target - 1)
    assert max(errors) < 0.005 and min(errors) > -0.03


def test_a_ramp_is_tracked(table: ControlTable) -> None:
    ctl = BudgetController(point(5.0), COSTS, table)
    n = 40_000
    strength = np.linspace(0.0, 0.5, n)[:, None]
    ramp = 0.1 + (traffic(n, seed=4) - 0.1) * (1.0 - strength)
    costs, _ = run(ctl, ramp)
    assert population(ramp[-8000:], point(5.0).threshold_array()) > 1.3 * ctl.target
    # Still drifting at the end: the loop lags a little behind, by a few percent.
    assert abs(costs[-8000:].mean() / ctl.target - 1) < 0.05
    assert ctl.moves >= 2


def test_it_stays_within_the_table(table: ControlTable) -> None:
    ctl = BudgetController(point(3.0), COSTS, table)
    run(ctl, traffic(30_000, seed=5, strength=0.9))  # even the cheapest row is too dear
    assert ctl.row == 0 and ctl.budget == table.mflops[0]
    ctl = BudgetController(point(8.0), COSTS, table)
    easy = np.minimum(1.0, traffic(30_000, seed=6) * 1.5)  # even the dearest row is too cheap
    run(ctl, easy)
    assert table.mflops[0] <= ctl.budget <= table.mflops[-1]


def test_plans_admitted_before_a_move_do_not_count_after_it(table: ControlTable) -> None:
    # Shifted traffic, answered 64 requests (512 images) after admission: the images still in
    # flight when the controller moved were served with the older, dearer thresholds. Counted
    # as served with the new ones they would make it move again, too far.
    lagged = BudgetController(point(5.0), COSTS, table)
    prompt = BudgetController(point(5.0), COSTS, table)
    shifted = traffic(12_000, seed=9, strength=0.4)
    run(lagged, shifted, lag=64)
    run(prompt, shifted)
    assert abs(mixed(shifted, lagged) / lagged.target - 1) < 0.03
    assert abs(lagged.budget / prompt.budget - 1) < 0.05


def test_images_stopped_by_a_deadline_do_not_steer_it(table: ControlTable) -> None:
    # Clean traffic, but a deadline stops every image that has not left by exit 2. Their cost
    # is the deadline's, not the thresholds': counted as spent they would look like cheap
    # traffic, and the controller would move to dearer thresholds, adding load.
    ctl = BudgetController(point(5.0), COSTS, table)
    stream = HELD[np.random.default_rng(2).integers(0, len(HELD), 20_000)]
    for i in range(0, len(stream), 8):
        ctl.observe(served(stream[i : i + 8], ctl.thresholds(), cap=1), ctl.epoch)
    assert ctl.moves == 0 and ctl.row == CALIBRATED


def test_the_estimate_is_exact_without_censoring_and_unbiased_with_it() -> None:
    conf = traffic(20_000, seed=11, strength=0.2)
    calibrated = point(5.0).threshold_array()
    cheaper = point(4.0).threshold_array()
    seen = served(conf, calibrated)
    # Cheaper thresholds stop every image at or before where it stopped: exact.
    assert estimate(seen, cheaper, COSTS).mflops == pytest.approx(population(conf, cheaper))
    # Images stopped at exit 2 by a deadline, on clean traffic: nothing is known of exits 3
    # and 4 but what the held-out split says (the prior), and the estimate holds.
    clean = traffic(20_000, seed=12)
    cut = served(clean, calibrated, cap=1)
    prior = hazards_of(point(5.0).heldout.exit_fractions)
    assert estimate(cut, calibrated, COSTS, prior).mflops == pytest.approx(
        population(clean, calibrated), rel=0.03
    )


def test_the_table_picks_the_dearest_row_within_the_budget(table: ControlTable) -> None:
    thr, cost = table.at(5.0)
    assert cost <= 5.0 and thr[-1] == -math.inf
    assert table.at(0.1)[1] == table.mflops[0]  # below the table: the cheapest row
    assert table.at(1e9)[1] == table.mflops[-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "at least 1000 images"),
        ({"window": 999}, "at least 1000 images"),
        ({"tolerance": -0.1}, "0 or more"),
        ({"tolerance": math.nan}, "0 or more"),
        ({"threshold": 0.0}, "positive"),
        ({"max_step": 1.0}, "max_step"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ControlSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [3.0, 5.0])
def test_between_two_rows_far_apart_on_the_traffic_a_share_is_served_the_dearer(
    table: ControlTable, target: float
) -> None:
    # A table with rows about 15 % apart (every 12th row): on shifted traffic no row costs
    # within 3 % of the target; the base row is under it, and a share of the requests gets the
    # next dearer row, so that the mix costs the target.
    coarse = ControlTable(list(table.mflops[::12]), list(table.thresholds[::12]))
    shifted = traffic(12_000, seed=5, strength=0.5)
    ctl = BudgetController(point(target), COSTS, coarse)
    run(ctl, traffic(1500, seed=4))
    costs, _ = run(ctl, shifted)
    assert 0 < ctl.share < 1
    below, above = (
        population(shifted, ctl.thresholds()),
        population(shifted, ctl.thresholds_of(ctl.row + 1)),
    )
    assert below < 0.97 * ctl.target and above > 1.03 * ctl.target  # no single row would do
    assert abs(mixed(shifted, ctl) / ctl.target - 1) < 0.03
    assert abs(costs[4000:].mean() / ctl.target - 1) < 0.03  # what was served, image by image
    assert ctl.mixed_budget == pytest.approx(
        (1 - ctl.share) * ctl.budget + ctl.share * ctl.budget_of(ctl.row + 1)
    )


def test_the_dither_spreads_the_dearer_row_evenly(table: ControlTable) -> None:
    ctl = BudgetController(point(5.0), COSTS, table)
    ctl.row, ctl.share = 3, 0.25
    rows = [ctl.next_row() for _ in range(40)]
    assert rows.count(4) == 10 and rows.count(3) == 30
    assert all(rows[i : i + 4].count(4) == 1 for i in range(0, 40, 4))
    ctl.share = 0.0
    assert {ctl.next_row() for _ in range(10)} == {3}


def _one_point_under_control() -> tuple[OperatingPoint, BudgetResolver, BudgetControl]:
    """One calibrated point (5 MFLOPs) with a control table, and budget control over it."""
    p = point(5.0)
    cal = Calibration(
        weights_sha256="a" * 64,
        heldout_sha256="b" * 64,
        created="2024-01-01T00:00:00+00:00",
        exit_mflops=COSTS.tolist(),
        operating_points=[p],
        default_operating_point=p.name,
        control=control_table(SOLVER, COSTS),
    )
    resolver = BudgetResolver(COSTS.tolist(), cal)
    return p, resolver, BudgetControl(cal, resolver.points, ControlSettings(), enabled=True)


def test_capped_requests_take_no_turn_of_the_dither() -> None:
    # A capped request never feeds the controller, so it must not take a turn of the dither:
    # a client that sent a capped preview before each full request took every dearer-row turn
    # with the previews, and the full requests, the controlled traffic, got none of the share.
    p, resolver, control = _one_point_under_control()
    ctl = control.states()[0].controller
    assert ctl is not None
    ctl.row, ctl.share = 3, 0.5  # moved: every other request on the next dearer row
    full = resolver.resolve(budget_mflops=p.expected_mflops)
    capped = resolver.resolve(budget_mflops=p.expected_mflops, max_exit=3)
    for first, then in ((capped, full), (full, capped)):
        dearer = 0
        for _ in range(100):
            served = [control.plan(first), control.plan(then)]
            dearer += next(x for x in served if x.max_exit is None).control_mflops == ctl.budget_of(
                4
            )
            assert next(
                x for x in served if x.max_exit is not None
            ).control_mflops == ctl.budget_of(3)
        assert dearer == 50
    credit = ctl._credit
    control.refund(control.plan(capped), 1)  # took no turn: gives none back
    assert ctl._credit == credit
    control.refund(control.plan(full), 1)  # took one: gives it back
    assert ctl._credit == pytest.approx(credit)


def test_requests_held_to_exit_1_by_their_deadline_take_no_turn_of_the_dither() -> None:
    # Under load, a request whose deadline lets it reach exit 1 only (admission's limit 0)
    # leaves there whatever the thresholds: its turns of the dither went to waste, and the
    # requests whose exits the thresholds decide got none of the dearer row's share.
    p, resolver, control = _one_point_under_control()
    ctl = control.states()[0].controller
    assert ctl is not None
    ctl.row, ctl.share = 3, 0.5
    full = resolver.resolve(budget_mflops=p.expected_mflops)
    dearer = 0
    for _ in range(100):
        held = control.plan(full, first_only=True)
        assert not held.dearer and not held.dithered
        served = control.plan(full)
        assert served.dithered
        dearer += served.dearer
    assert dearer == 50
    credit = ctl._credit
    control.refund(control.plan(full, first_only=True), 1)  # took no turn: gives none back
    assert ctl._credit == credit


def test_the_dither_shares_images_not_requests(table: ControlTable) -> None:
    # Requests of three images and of one alternate; a quarter of the images is to be served
    # the dearer row. Counted per request, every fourth request took it, always a single
    # image: one image in eight.
    ctl = BudgetController(point(5.0), COSTS, table)
    ctl.row, ctl.share = 3, 0.25
    sizes = [3, 1] * 200
    dearer = sum(n for n in sizes if ctl.next_row(n) == 4)
    assert abs(dearer / sum(sizes) - 0.25) <= 2 / sum(sizes)


def test_a_refund_gives_back_exactly_the_turn_taken(table: ControlTable) -> None:
    ctl = BudgetController(point(5.0), COSTS, table)
    ctl.row, ctl.share = 3, 0.25
    for n in (1, 3, 32, 2, 1, 7):
        before = ctl._credit
        ctl.refund(n, ctl.next_row(n) == 4)
        assert ctl._credit == pytest.approx(before)
    ctl.share = 0.0
    ctl.refund(5, False)  # not dithered: no turn was taken, none is given back
    assert ctl._credit == pytest.approx(before)


def test_model_info_counts_the_adjustments_metrics_counts() -> None:
    # A decision that keeps the held-out cost (the estimate asked again, the same row chosen)
    # counted as an adjustment in /v1/model but in neither direction of
    # exitwise_budget_control_adjustments_total: the two disagreed.
    p, resolver, control = _one_point_under_control()
    state = control.states()[0]
    ctl = state.controller
    assert ctl is not None
    decisions = iter([3, 3, 2])  # a move to row 3, the same row again, then row 2

    def decide(traffic: Traffic, epoch: int) -> Move:
        return ctl._move(next(decisions), 5.0, 100, traffic)

    ctl.observe = decide  # type: ignore[method-assign]
    plan = control.plan(resolver.resolve(budget_mflops=p.expected_mflops))
    for _ in range(3):
        control.observe(plan, [5.0], served(traffic(1, 0), ctl.thresholds()))
    shown = control.describe(p.name)["adjustments"]
    assert ctl.moves == 3 and shown == state.up + state.down == 2
