"""The purchase reward on hand-built goal/product pairs, one term at a time.

The goal (builders.goal) asks for 2 attributes ("paraben free", "long lasting"), 2 options
("lavender", "8 fl oz") and a price up to $20, so the denominator is always 2 + 2 + 1 = 5.
Its title "Lumora Shampoo, Paraben Free, Long Lasting" has 6 content words: lumora, shampoo,
paraben, free, long, lasting.
"""

from __future__ import annotations

import pytest

from environments.webshop.reward import purchase_reward
from tests.environments.webshop.builders import goal, product

BOTH = ("lavender", "8 fl oz")


def test_the_goal_product_with_every_option_scores_one() -> None:
    # r_type 1 (same title), 2/2 attributes, 2/2 options, price 12.99 <= 20: 1 * 5/5
    parts = purchase_reward(goal(), product(), BOTH)
    assert parts.reward == 1.0 and parts.success
    assert (parts.attributes_matched, parts.options_matched, parts.price_ok) == (2, 2, True)


def test_attributes_term() -> None:
    # Only "paraben free" anywhere in the product: (1 + 2 + 1) / 5 = 0.8
    one = product(title="Lumora Shampoo, Paraben Free", attributes=("paraben free",))
    parts = purchase_reward(goal(), one, BOTH)
    assert parts.attributes_matched == 1 and parts.reward == pytest.approx(0.8)
    # No listed attributes, but the title says "Paraben Free" and the description "long-lasting"
    # (normal form "long lasting"): both found as phrases, (2 + 2 + 1) / 5 = 1
    texts = product(title="Lumora Shampoo, Paraben Free", attributes=(), description="A long-lasting wash.")
    assert purchase_reward(goal(), texts, BOTH).reward == 1.0
    # A product attribute whose words include the goal attribute's words covers it
    wider = product(attributes=("paraben free formula", "long lasting"), title="Lumora Shampoo")
    assert purchase_reward(goal(), wider, BOTH).attributes_matched == 2
    # Whole words only: "long lastingness" is not "long lasting": 1 of 2 -> 0.8
    near = product(title="Lumora Shampoo, Paraben Free", attributes=("long lastingness",))
    assert purchase_reward(goal(), near, BOTH).reward == pytest.approx(0.8)


def test_options_term() -> None:
    # One of two goal options selected: (2 + 1 + 1) / 5 = 0.8
    assert purchase_reward(goal(), product(), ("lavender",)).reward == pytest.approx(0.8)
    # Normal form equality: case and punctuation do not matter, extra words do
    assert purchase_reward(goal(), product(), ("LAVENDER", "8 Fl. Oz")).reward == 1.0
    parts = purchase_reward(goal(), product(), ("rose", "8 fl oz (pack of 1)"))
    assert parts.options_matched == 0 and parts.reward == pytest.approx(0.6)  # (2 + 0 + 1) / 5


def test_price_term() -> None:
    # $25 > $20: (2 + 2 + 0) / 5 = 0.8
    parts = purchase_reward(goal(), product(price=25.0, price_tag="$25.00"), BOTH)
    assert not parts.price_ok and parts.reward == pytest.approx(0.8)
    # A price range costs its lowest price: $15 <= $20 -> 1
    ranged = product(price=15.0, price_tag="$15.00 to $30.00")
    assert purchase_reward(goal(), ranged, BOTH).reward == 1.0
    # No bound in the goal (1e6): any price passes
    assert purchase_reward(goal(price_upper=1_000_000.0), product(price=999.0), BOTH).price_ok


def test_type_term_levels() -> None:
    # Title "Vexa Lotion, Free" shares 1 of the goal's 6 title words ("free"): title_score 1/6,
    # which is >= 0.1 but not > 0.2; a different query ("lotion") and category path sharing only
    # the root ("Beauty & Personal Care"): r_type 0.5. Everything else matches: 0.5 * 5/5 = 0.5
    other = product(
        title="Vexa Lotion, Free",
        query="lotion",
        product_category="Beauty & Personal Care › Skin Care › Lotion",
    )
    parts = purchase_reward(goal(), other, BOTH)
    assert parts.title_score == pytest.approx(1 / 6)
    assert (parts.query_match, parts.category_match, parts.r_type) == (False, False, 0.5)
    assert parts.reward == pytest.approx(0.5)
    # The same product in a path sharing two levels (root and "Hair Care"): category match, r_type 1
    same_branch = product(title="Vexa Lotion, Free", query="lotion",
                          product_category="Beauty & Personal Care › Hair Care › Conditioner")  # fmt: skip
    assert purchase_reward(goal(), same_branch, BOTH).r_type == 1.0
    # ... or the same search query: r_type 1
    same_query = product(
        title="Vexa Lotion, Free", product_category="Beauty & Personal Care › Skin Care › Lotion"
    )
    assert purchase_reward(goal(), same_query, BOTH).r_type == 1.0
    # 2 of 6 title words (1/3 > 0.2) is enough on its own: r_type 1
    titled = product(
        title="Vexa Lotion, Paraben Free", query="lotion", product_category="Beauty & Personal Care"
    )
    assert purchase_reward(goal(), titled, BOTH).r_type == 1.0


def test_type_term_low_levels() -> None:
    # A 12-word goal title (lumora shampoo paraben free long lasting lavender scented salon
    # quality daily formula) and a product sharing 1 word: 1/12 < 0.1 -> r_type 0.1, even with
    # the same query; everything else matches: 0.1 * 5/5 = 0.1
    long_name = "Lumora Shampoo Paraben Free Long Lasting Lavender Scented Salon Quality Daily Formula"
    parts = purchase_reward(goal(name=long_name), product(title="Vexa Lotion, Free"), BOTH)
    assert parts.title_score == pytest.approx(1 / 12) and parts.query_match
    assert parts.r_type == 0.1 and parts.reward == pytest.approx(0.1)
    # No title word in common: r_type 0 and reward 0, whatever else matches
    parts = purchase_reward(goal(), product(title="Vexa Lotion"), BOTH)
    assert parts.title_score == 0.0 and parts.r_type == 0.0 and parts.reward == 0.0


def test_terms_combine() -> None:
    # r_type 0.5 (as above), 1 of 2 attributes ("paraben free" in the attribute list only),
    # 1 of 2 options, over budget: 0.5 * (1 + 1 + 0) / 5 = 0.2
    mixed = product(
        title="Vexa Lotion, Free",
        query="lotion",
        product_category="Beauty & Personal Care › Skin Care › Lotion",
        attributes=("paraben free",),
        price=30.0,
    )
    parts = purchase_reward(goal(), mixed, ("lavender", "16 fl oz"))
    assert (parts.r_type, parts.attributes_matched, parts.options_matched, parts.price_ok) == (
        0.5,
        1,
        1,
        False,
    )
    assert parts.reward == pytest.approx(0.2) and not parts.success
