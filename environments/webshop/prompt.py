"""The agent-facing rules and the fixed in-context example, in ETO's WebShop prompt style.

The example is a hand-made three-product shop (asins that no catalogue uses) played by the
scripted expert, so its observations are rendered by the same page code as real episodes
and can never drift from them.
"""

from __future__ import annotations

from environments.webshop.data import Goal, Product
from environments.webshop.expert import expert_plan
from environments.webshop.pages import Session


def task_instruction(max_steps: int) -> str:
    return (
        "You are shopping in a web store for the product an instruction describes.\n"
        "Each turn you see the current page: its texts and buttons, separated by [SEP].\n"
        "Actions:\n"
        "search[keywords] - search the store; only on the search page.\n"
        "click[value] - click something the current page shows: a product id such as B0ABC12345, "
        "an option value, Next >, < Prev, Back to Search, Description, Features, Reviews or Buy Now.\n"
        "On a product page, click each option the instruction asks for, then click[Buy Now]. Buying "
        "ends the task; it scores how well the product matches the instruction's type, attributes, "
        "options and price.\n"
        "An invalid action changes nothing and wastes a step. "
        f"You have at most {max_steps} actions.\n"
        "Respond with a line 'Thought: ...' and then a line 'Action: ...'."
    )


EXAMPLE_PRODUCTS: tuple[Product, ...] = (
    Product(
        asin="B0EXAMPL01",
        title="Cocoaria Dark Chocolate, Sugar Free, Fair Trade",
        category="food",
        query="dark chocolate",
        product_category="Grocery & Gourmet Food › Candy › Dark Chocolate",
        description="Sugar free dark chocolate from fair trade cocoa.",
        features=("Sugar free", "Fair trade"),
        price=8.99,
        price_tag="$8.99",
        options=(("flavor", ("original", "caramel")),),
        attributes=("sugar free", "fair trade"),
    ),
    Product(
        asin="B0EXAMPL02",
        title="Velvetine Dark Chocolate, Gluten Free, Non Gmo",
        category="food",
        query="dark chocolate",
        product_category="Grocery & Gourmet Food › Candy › Dark Chocolate",
        description="Gluten free dark chocolate bars.",
        features=("Gluten free", "Non GMO"),
        price=12.49,
        price_tag="$12.49",
        options=(("flavor", ("original", "mint", "orange")), ("size", ("pack of 1", "pack of 2"))),
        attributes=("gluten free", "non gmo"),
    ),
    Product(
        asin="B0EXAMPL03",
        title="Velvetine Dark Chocolate Chips, Gluten Free, 2 Pack",
        category="food",
        query="chocolate chips",
        product_category="Grocery & Gourmet Food › Baking › Chocolate Chips",
        description="Gluten free dark chocolate chips for baking.",
        features=("Gluten free",),
        price=34.99,
        price_tag="$34.99",
        options=(("size", ("pack of 2", "pack of 4")),),
        attributes=("gluten free",),
    ),
)

EXAMPLE_GOAL = Goal(
    index=-1,
    asin="B0EXAMPL02",
    instruction="i need gluten free dark chocolate with flavor mint and size pack of 2, and price lower than 30.00 dollars",
    request="i need gluten free dark chocolate with flavor mint and size pack of 2",
    attributes=("gluten free",),
    options=("mint", "pack of 2"),
    price_upper=30.0,
    name=EXAMPLE_PRODUCTS[1].title,
    category="food",
    query="dark chocolate",
    product_category=EXAMPLE_PRODUCTS[1].product_category,
)


def _example_search(keywords: str) -> tuple[Product, ...]:
    return EXAMPLE_PRODUCTS


def one_shot_example(max_steps: int) -> list[tuple[str, str]]:
    plan = expert_plan(EXAMPLE_GOAL, _example_search, max_steps=max(max_steps, 10))
    if plan is None:  # the example is fixed data: this is a bug, not a data problem
        raise AssertionError("webshop: the one-shot example no longer solves")
    session = Session(EXAMPLE_GOAL, _example_search)
    observation = session.observation()
    rounds: list[tuple[str, str]] = []
    for thought, action in plan:
        rounds.append((observation, f"Thought: {thought}\nAction: {action}"))
        observation, _ = session.apply(action)
    return rounds
