"""Page flow of WebShop's text mode on a hand-built 23-product shop, then once through the env."""

from __future__ import annotations

from dataclasses import replace

import pytest

from environments.webshop import WebShopEnv
from environments.webshop.data import Product, Review
from environments.webshop.pages import SEP, Session
from tests.environments.webshop.builders import goal, product

SHOP: tuple[Product, ...] = tuple(
    product(
        asin=f"B0PAGE{i:04d}",
        title=f"Shampoo Number {i}",
        description=f"Description of shampoo {i}.",
        features=(f"Feature one of {i}", f"Feature two of {i}"),
        reviews=(Review("Great", "5", f"Loved shampoo {i}."),) if i == 0 else (),
        rating="5.0" if i == 0 else "N.A.",
    )
    for i in range(23)
)


def search(keywords: str) -> tuple[Product, ...]:
    return SHOP if "shampoo" in keywords else ()


def session() -> Session:
    return Session(goal(), search)


def snapshot(s: Session) -> tuple[object, ...]:
    return (
        s.page,
        s.keywords,
        s.page_number,
        s.product,
        s.detail,
        dict(s.selected),
        s.purchase,
        s.observation(),
    )


def test_search_page() -> None:
    s = session()
    instruction = goal().instruction
    assert s.observation() == f"WebShop [SEP] Instruction: [SEP] {instruction} [SEP] Search"
    assert s.clickables() == []


def test_results_pages_next_and_prev() -> None:
    s = session()
    obs, valid = s.apply("search[Paraben Free SHAMPOO]")
    assert valid and s.keywords == "paraben free shampoo"
    head = f"Instruction: [SEP] {goal().instruction} [SEP] Back to Search [SEP] Page 1 (Total results: 23) [SEP] Next >"
    assert obs.startswith(head + " [SEP] B0PAGE0000 [SEP] Shampoo Number 0 [SEP] $12.99 [SEP] B0PAGE0001")
    assert "< Prev" not in obs and obs.count("B0PAGE") == 10
    obs, _ = s.apply("click[Next >]")
    assert "Page 2 (Total results: 23) [SEP] < Prev [SEP] Next > [SEP] B0PAGE0010" in obs
    obs, _ = s.apply("click[next >]")  # clicks match case-insensitively
    assert "Page 3 (Total results: 23) [SEP] < Prev [SEP] B0PAGE0020" in obs and obs.count("B0PAGE") == 3
    assert "Next >" not in obs
    assert s.apply("click[Next >]")[1] is False  # no page 4
    obs, _ = s.apply("click[< Prev]")
    assert "Page 2 (Total results: 23)" in obs
    # An asin of another page is not clickable here
    assert s.apply("click[B0PAGE0001]")[1] is False


def test_no_results() -> None:
    s = session()
    obs, valid = s.apply("search[garden hose]")
    assert valid and obs.endswith("Back to Search [SEP] Page 1 (Total results: 0)")
    assert s.clickables() == ["Back to Search"]


def test_item_page_and_detail_pages() -> None:
    s = session()
    s.apply("search[shampoo]")
    obs, valid = s.apply("click[b0page0000]")  # asins match case-insensitively too
    assert valid and s.page == "item"
    assert obs == SEP.join(
        [
            "Instruction:", goal().instruction, "Back to Search", "< Prev",
            "scent", "lavender", "rose", "size", "8 fl oz", "16 fl oz",
            "Shampoo Number 0", "Price: $12.99", "Rating: 5.0",
            "Description", "Features", "Reviews", "Buy Now",
        ]
    )  # fmt: skip
    item = obs
    obs, _ = s.apply("click[Description]")
    assert obs.endswith("Back to Search [SEP] < Prev [SEP] Description of shampoo 0.")
    assert s.clickables() == ["Back to Search", "< Prev"]
    assert s.apply("click[< Prev]")[0] == item
    assert s.apply("click[Features]")[0].endswith("< Prev [SEP] Feature one of 0 [SEP] Feature two of 0")
    s.apply("click[< Prev]")
    assert s.apply("click[Reviews]")[0].endswith("< Prev [SEP] Great [SEP] 5 [SEP] Loved shampoo 0.")
    s.apply("click[< Prev]")
    # "< Prev" on the item page returns to the results page it came from
    obs, _ = s.apply("click[< Prev]")
    assert s.page == "results" and "Page 1 (Total results: 23)" in obs


def test_options_buy_and_back_to_search() -> None:
    s = session()
    s.apply("search[shampoo]")
    s.apply("click[B0PAGE0003]")
    s.apply("click[rose]")
    s.apply("click[Lavender]")  # same group: replaces rose
    s.apply("click[8 FL OZ]")
    assert s.selected == {"scent": "lavender", "size": "8 fl oz"}
    s.apply("click[Description]")
    s.apply("click[< Prev]")
    assert s.selected == {"scent": "lavender", "size": "8 fl oz"}  # sub-pages keep the selection
    s.apply("click[Back to Search]")
    assert (
        s.page == "search" and s.selected == {} and s.observation().startswith("WebShop [SEP] Instruction:")
    )
    s.apply("search[shampoo]")
    s.apply("click[B0PAGE0000]")
    s.apply("click[lavender]")
    obs, valid = s.apply("click[Buy Now]")
    assert valid and s.page == "done" and s.purchase is not None
    # goal wants lavender and 8 fl oz; only lavender selected: title "Shampoo Number 0" shares 1 of 6
    # title words (1/6), but the same query makes r_type 1; 2/2 attributes: (2 + 1 + 1) / 5 = 0.8
    assert s.purchase.reward == pytest.approx(0.8)
    assert obs.startswith("Thank you for shopping with us! [SEP] Purchased [SEP] B0PAGE0000")
    assert obs.endswith("Your score (min 0.0, max 1.0) [SEP] 0.80")


def test_invalid_actions_change_nothing() -> None:
    s = session()
    for action in ("click[Search]", "click[Buy Now]", "search[]", "buy", "", "search shampoo"):
        before = snapshot(s)
        obs, valid = s.apply(action)
        assert not valid and obs.startswith("Invalid action!") and snapshot(s) == before, action
    s.apply("search[shampoo]")
    s.apply("click[B0PAGE0002]")
    for action in ("search[shampoo]", "click[B0PAGE0003]", "click[Next >]", "click[purple]", "click[]"):
        before = snapshot(s)
        obs, valid = s.apply(action)
        assert not valid and obs.startswith("Invalid action!") and snapshot(s) == before, action
    assert "search[...] works on the search page only" in s.apply("search[x]")[0]


def test_an_option_named_like_a_button_does_not_shadow_it() -> None:
    odd = replace(SHOP[0], options=(("style", ("buy now", "plain")),))
    s = Session(goal(), lambda _: (odd,))
    s.apply("search[x]")
    s.apply(f"click[{odd.asin}]")
    s.apply("click[Buy Now]")
    assert s.page == "done"


def test_env_episode_through_the_pages(env: WebShopEnv) -> None:
    task = env.tasks("train")[0]
    goal_ = env.goal(task)
    obs, info = env.reset(task)
    assert obs == f"WebShop [SEP] Instruction: [SEP] {goal_.instruction} [SEP] Search"
    assert info["instruction"] == goal_.instruction
    result = env.step("click[Buy Now]")
    assert result.observation.startswith("Invalid action!") and not result.info["valid_action"]
    assert (result.reward, result.terminated, result.truncated) == (0.0, False, False)
    result = env.step(f"search[{goal_.request}]")
    assert result.info["page"] == "results" and goal_.asin in result.observation
    result = env.step(f"click[{goal_.asin}]")
    assert result.info["page"] == "item" and result.reward == 0.0
    result = env.step("click[Buy Now]")  # no options selected
    parts = result.info["reward_parts"]
    expected = (parts["attributes_matched"] + 0 + 1) / (len(goal_.attributes) + len(goal_.options) + 1)
    assert result.terminated and not result.truncated and result.reward == pytest.approx(expected)
    assert result.info["success"] is False and result.info["purchased"] == goal_.asin
    with pytest.raises(RuntimeError, match="reset"):
        env.step("click[Back to Search]")
