"""Render the pledge's tables as docs/pledge-states.md: a Mermaid state diagram,
the voucher-response policy and the retry budgets.

    python -m pledgeforge.firmware.diagram docs/pledge-states.md          # regenerate
    python -m pledgeforge.firmware.diagram --check docs/pledge-states.md  # exit 1 when stale
    python -m pledgeforge.firmware.diagram                                # print it

Everything in the file comes from `pledge_tables` and the `PledgeConfig`
defaults, so the documentation cannot drift from what the machine does.
"""

from __future__ import annotations

import sys

from pledgeforge.generated_docs import generator_main

from .pledge_events import State
from .pledge_machine import PledgeConfig
from .pledge_tables import (FAILURE_FROM_ANY_RUNNING_STATE, TRANSITIONS, VOUCHER_RESPONSE_POLICY,
                            Budget, Reaction)

DEFAULT_PATH = "docs/pledge-states.md"
COMMAND = f"python -m pledgeforge.firmware.diagram {DEFAULT_PATH}"


def _node(state: State) -> str:
    return state.value.replace("-", "_")


def _label(text: str) -> str:
    # Mermaid ends a statement at ';' and reads ':' as the label separator.
    return text.replace(";", ",").replace(":", ",")


def mermaid() -> str:
    """The state diagram, every arrow from TRANSITIONS."""
    lines = ["stateDiagram-v2"]
    lines += [f'    state "{state.value}" as {_node(state)}' for state in State]
    lines.append(f"    [*] --> {_node(State.IDLE)}")
    for source, targets in TRANSITIONS.items():
        for target, cause in targets.items():
            lines.append(f"    {_node(source)} --> {_node(target)} : {_label(cause)}")
    lines.append(f"    {_node(State.ENROLLED)} --> [*]")
    lines.append(f"    {_node(State.FAILED)} --> [*]")
    lines.append(f"    note left of {_node(State.FAILED)} : {_label(FAILURE_FROM_ANY_RUNNING_STATE)}")
    return "\n".join(lines) + "\n"


def _policy_table() -> list[str]:
    rows = ["| answer | cloud registrar's name | the pledge | budget | details |",
            "|---|---|---|---|---|"]
    for rule in VOUCHER_RESPONSE_POLICY:
        name = f"`{rule.cloud_response.value}`" if rule.cloud_response else ""
        what = rule.reaction.value
        if rule.reaction is Reaction.WAIT:
            what += " (budget spent: start over)"
        budget = f"`{rule.budget.value}`" if rule.budget else ""
        rows.append(f"| {rule.answer} | {name} | {what} | {budget} | {rule.note} |")
    return rows


def _seconds(value: float) -> str:
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g} h"
    return f"{value:g} s"


def _budget_table(config: PledgeConfig) -> list[str]:
    rows = ["| budget | spent on | retries per request | longest wait |", "|---|---|---|---|"]
    backoff = (f"exponential backoff from {_seconds(config.backoff_initial_s)} "
               f"up to {_seconds(config.backoff_max_s)}")
    for budget in Budget:
        limit, cap = config.budget(budget)
        wait = backoff if cap is None else f"Retry-After (else the backoff), at most {_seconds(cap)}"
        rows.append(f"| `{budget.value}` | {budget.spent_on} | {limit} | {wait} |")
    return rows


def render() -> str:
    """The whole of docs/pledge-states.md."""
    config = PledgeConfig(cloud_registrar_url="https://cloud-registrar.example")
    parts = [
        "# The pledge's states and policies",
        "",
        "Generated from `firmware/pledge_tables.py` and the `PledgeConfig` defaults by",
        f"`{COMMAND}`; do not edit by hand (a test fails when",
        "this file and the tables differ).",
        "",
        "## State diagram",
        "",
        "Every move `PledgeMachine` makes is listed in `TRANSITIONS`; any other move raises",
        "`IllegalTransition`.",
        "",
        "```mermaid",
        mermaid().rstrip("\n"),
        "```",
        "",
        "## Answers to a voucher-request",
        "",
        "`VOUCHER_RESPONSE_POLICY`, first match wins. The names are the cloud registrar's",
        "(`pledgeforge registrar set-response --response NAME`).",
        "",
        *_policy_table(),
        "",
        "## Retry budgets",
        "",
        "Each budget counts per request. When one runs out the pledge starts over at the cloud",
        f"registrar, at most `max_restarts` ({config.max_restarts}) times, then fails; a redirect "
        f"chain may have at most `max_redirects` ({config.max_redirects}) hops.",
        "",
        *_budget_table(config),
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    return generator_main("pledgeforge.firmware.diagram", __doc__.split("\n\n")[0], DEFAULT_PATH,
                          render, argv)


if __name__ == "__main__":
    sys.exit(main())
