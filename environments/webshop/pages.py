"""One shopping session: the pages of WebShop's text mode and the actions that move between them.

Pages render as WebShop's text observation mode does: the visible texts of the page joined by
" [SEP] ". Flow: search page -> results page (10 products a page, up to 50 results, "Next >" /
"< Prev") -> item page (option groups, title, price, rating, "Description", "Features",
"Reviews", "Buy Now") -> a detail page ("< Prev" returns to the item) -> "Buy Now" ends the
session with the purchase reward. "Back to Search" returns to the search page from any page
and clears the selected options. ``search[...]`` works on the search page only; ``click[...]``
takes one of the current page's clickables, case-insensitively. Anything else is invalid:
nothing changes and the observation says why.

As in WebShop's simple text mode, the item page does not show which options are selected.
Kept apart from the env (as tidy's room is) so the scripted expert can plan by acting in a
scratch session and so read exactly what an agent reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from environments.webshop.data import Goal, Product
from environments.webshop.reward import RewardParts, purchase_reward
from environments.webshop.text import click_key

SEP = " [SEP] "
PAGE_SIZE = 10

BACK_TO_SEARCH = "Back to Search"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
BUY_NOW = "Buy Now"
DETAIL_PAGES: tuple[str, ...] = ("Description", "Features", "Reviews")

_ACTION = re.compile(r"\s*(search|click)\s*\[(.*)\]\s*", re.IGNORECASE | re.DOTALL)

Search = Callable[[str], Sequence[Product]]


@dataclass
class Session:
    goal: Goal
    search_products: Search
    page: str = "search"
    """search | results | item | detail | done"""
    keywords: str = ""
    results: Sequence[Product] = ()
    page_number: int = 1
    product: Product | None = None
    detail: str = ""
    selected: dict[str, str] = field(default_factory=dict)
    """option group -> selected value"""
    purchase: RewardParts | None = None

    # --- rendering -------------------------------------------------------------------------

    def _header(self) -> list[str]:
        return ["Instruction:", self.goal.instruction]

    def observation(self) -> str:
        if self.page == "search":
            return SEP.join(["WebShop", *self._header(), "Search"])
        if self.page == "results":
            parts = [
                *self._header(),
                BACK_TO_SEARCH,
                f"Page {self.page_number} (Total results: {len(self.results)})",
            ]
            if self.page_number > 1:
                parts.append(PREV_PAGE)
            if self._has_next():
                parts.append(NEXT_PAGE)
            for p in self._page_products():
                parts += [p.asin, p.title, p.price_tag]
            return SEP.join(parts)
        product = self.product
        assert product is not None
        if self.page == "item":
            parts = [*self._header(), BACK_TO_SEARCH, PREV_PAGE]
            for group, values in product.options:
                parts += [group, *values]
            parts += [
                product.title,
                f"Price: {product.price_tag}",
                f"Rating: {product.rating}",
                *DETAIL_PAGES,
                BUY_NOW,
            ]
            return SEP.join(parts)
        if self.page == "detail":
            return SEP.join([*self._header(), BACK_TO_SEARCH, PREV_PAGE, *self._detail_texts(product)])
        assert self.purchase is not None
        chosen = [f"{g}: {v}" for g, v in self.selected.items()] or ["none"]
        return SEP.join(
            [
                "Thank you for shopping with us!",
                "Purchased",
                product.asin,
                product.title,
                f"Price: {product.price_tag}",
                "Options:",
                ", ".join(chosen),
                "Your score (min 0.0, max 1.0)",
                f"{self.purchase.reward:.2f}",
            ]
        )

    def _detail_texts(self, product: Product) -> list[str]:
        if self.detail == "Description":
            return [product.description or "N.A."]
        if self.detail == "Features":
            return list(product.features) or ["N.A."]
        texts: list[str] = []
        for r in product.reviews:
            texts += [t for t in (r.title, r.score, r.body) if t]
        return texts or ["No reviews yet."]

    def _page_products(self) -> Sequence[Product]:
        start = (self.page_number - 1) * PAGE_SIZE
        return self.results[start : start + PAGE_SIZE]

    def _has_next(self) -> bool:
        return self.page_number * PAGE_SIZE < len(self.results)

    def clickables(self) -> list[str]:
        """What ``click[...]`` accepts on the current page, as shown."""
        if self.page == "results":
            out = [BACK_TO_SEARCH]
            if self.page_number > 1:
                out.append(PREV_PAGE)
            if self._has_next():
                out.append(NEXT_PAGE)
            return out + [p.asin for p in self._page_products()]
        if self.page == "item":
            assert self.product is not None
            values = [v for _, vs in self.product.options for v in vs]
            return [BACK_TO_SEARCH, PREV_PAGE, *values, *DETAIL_PAGES, BUY_NOW]
        if self.page == "detail":
            return [BACK_TO_SEARCH, PREV_PAGE]
        return []

    # --- actions ---------------------------------------------------------------------------

    def apply(self, action: str) -> tuple[str, bool]:
        """Run one action; returns (observation, whether it was valid). Invalid: no change."""
        if self.page == "done":
            return "Invalid action! The purchase is complete.", False
        m = _ACTION.fullmatch(action)
        if m is None:
            return "Invalid action! Use search[keywords] or click[value].", False
        verb, arg = m.group(1).lower(), m.group(2).strip()
        if verb == "search":
            if self.page != "search":
                return (
                    "Invalid action! search[...] works on the search page only: click[Back to Search] first.",
                    False,
                )
            if not arg:
                return "Invalid action! search[...] needs keywords.", False
            self.keywords = arg.lower()
            self.results = self.search_products(self.keywords)
            self.page, self.page_number = "results", 1
            return self.observation(), True
        clickable = {click_key(c): c for c in self.clickables()}.get(click_key(arg))
        if clickable is None:
            return f"Invalid action! {arg!r} is not clickable on this page.", False
        self._click(clickable)
        return self.observation(), True

    def _click(self, clickable: str) -> None:
        if clickable == BACK_TO_SEARCH:
            self.page, self.product, self.detail, self.selected = "search", None, "", {}
            self.results, self.keywords, self.page_number = (), "", 1
        elif self.page == "results":
            if clickable == NEXT_PAGE:
                self.page_number += 1
            elif clickable == PREV_PAGE:
                self.page_number -= 1
            else:
                self.product = next(p for p in self._page_products() if p.asin == clickable)
                self.page, self.selected = "item", {}
        elif self.page == "detail":  # only "< Prev" is left
            self.page, self.detail = "item", ""
        elif clickable == PREV_PAGE:
            self.page, self.product, self.selected = "results", None, {}
        elif clickable in DETAIL_PAGES:
            self.page, self.detail = "detail", clickable
        elif clickable == BUY_NOW:
            assert self.product is not None
            self.purchase = purchase_reward(self.goal, self.product, self.selected.values())
            self.page = "done"
        else:
            assert self.product is not None
            group = next(g for g, vs in self.product.options if clickable in vs)
            self.selected[group] = clickable
