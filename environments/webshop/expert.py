"""The scripted WebShop expert: it knows the goal's product (asin) and shops like a careful human.

Plan: ``search[<the instruction without its price clause>]``; ``click[Next >]`` until the
goal's product is on the page (at most the 5 pages of 50 results); ``click[<asin>]``;
``click[<value>]`` for each option the goal names, picking the value equal to it in normal
form; ``click[Buy Now]``. The plan is played in a scratch session, so every action is checked
valid and the purchase scored: where the product is not found, an option has no equal value,
the purchase scores below 1 or the plan exceeds ``max_steps``, there is no scripted path and
the expert is None for that task. On the synthetic catalogue that never happens (the
generator makes every goal's words find its product; the tests check a sample); on WebShop's
human goals it does for some, because human instructions do not always name options or
attributes the way the product data spells them.
"""

from __future__ import annotations

from environments.webshop.data import Goal
from environments.webshop.pages import BUY_NOW, NEXT_PAGE, Search, Session
from environments.webshop.text import normalize


def search_keywords(goal: Goal) -> str:
    return goal.request.lower()


def expert_plan(goal: Goal, search_products: Search, max_steps: int) -> list[tuple[str, str]] | None:
    """(thought, action) per step, or None where no scripted path reaches reward 1."""
    session = Session(goal, search_products)
    steps: list[tuple[str, str]] = []

    def act(thought: str, action: str) -> None:
        _, valid = session.apply(action)
        if not valid:  # a bug here would silently poison every demonstration
            raise AssertionError(f"webshop expert produced an invalid action {action!r}")
        steps.append((thought, action))

    act("I will search for the product the instruction describes.", f"search[{search_keywords(goal)}]")
    while goal.asin not in session.clickables():
        if NEXT_PAGE not in session.clickables():
            return None
        act(
            f"No product on page {session.page_number} matches everything I need. I will look at the next page.",
            f"click[{NEXT_PAGE}]",
        )
    product = next(p for p in session.results if p.asin == goal.asin)
    budget = "" if goal.price_upper >= 1e6 else f", within my budget of {goal.price_upper:.2f} dollars"
    act(
        f"{product.asin} matches what I need and costs {product.price_tag}{budget}. I will open it.",
        f"click[{product.asin}]",
    )

    values = [v for _, vs in product.options for v in vs]
    for option in goal.options:
        value = next((v for v in values if normalize(v) == normalize(option)), None)
        if value is None:
            return None
        if value in session.selected.values():
            continue
        act(f"The instruction asks for {option}, so I select {value}.", f"click[{value}]")
    act("Everything I need is selected and the price is right. I will buy it.", f"click[{BUY_NOW}]")
    if session.purchase is None or not session.purchase.success or len(steps) > max_steps:
        return None
    return steps
