"""Time budgets that hold on any machine: the learning-rate schedule ends when the time does.

A schedule that decays to zero at `train.max_steps` (cosine) fits a time budget only on the machine
where the step count was tuned: a faster one finishes the decay early and idles at zero, a
slower one runs out of time mid-decay. Under `train.max_minutes` attnkit therefore measures
its own speed once, at the end of warm-up, with a validation then (its cost counts against the
budget too), and fixes the step where the schedule ends: the steps that fit in the time left,
at most `train.max_steps`. The plan is saved in the train state, so a resumed run follows the
same schedule exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_TIMED_STEPS = 20  # the plan waits for at least this many steps, whatever the warm-up


@dataclass(frozen=True)
class Plan:
    """The step where the schedule ends under a time budget, and what it was computed from."""

    steps: int
    step_seconds: float
    validation_seconds: float

    def describe(self, budget_minutes: float, max_steps: int) -> str:
        """One log line saying what was fixed and why."""
        capped = " (train.max_steps)" if self.steps == max_steps else ""
        return (
            f"time budget: {budget_minutes:g} minutes at {self.step_seconds:.2f} s a step and "
            f"{self.validation_seconds:.1f} s a validation: the schedule ends at step "
            f"{self.steps:,}{capped}"
        )


def plan_at(warmup: int) -> int:
    """The step at which to plan: the end of warm-up, and never before MIN_TIMED_STEPS."""
    return max(warmup, MIN_TIMED_STEPS)


def plan(
    *,
    step: int,
    elapsed: float,
    step_seconds: float,
    validation_seconds: float,
    budget_seconds: float,
    valid_every: int,
    max_steps: int,
) -> Plan:
    """The last step of the schedule: after `step` steps and `elapsed` seconds, the steps that
    fit in the rest of the budget at `step_seconds` each, with a validation of
    `validation_seconds` every `valid_every` steps and one at the end."""
    left = budget_seconds - elapsed - validation_seconds
    per_step = step_seconds + validation_seconds / valid_every
    more = max(int(left / per_step), 1) if per_step > 0 else max_steps
    return Plan(min(step + more, max_steps), step_seconds, validation_seconds)
