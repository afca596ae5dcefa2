"""The purchase reward of the WebShop paper (Yao et al., 2022, section 3.1), with exact rules.

    r = r_type * (|U_att ∩ Y_att| + |U_opt ∩ Y_opt| + 1[y_price <= u_price])
               / (|U_att| + |U_opt| + 1)

U is the goal (attributes U_att, options U_opt, price bound u_price), Y the bought product
(attributes Y_att, the options selected before "Buy Now" Y_opt, price y_price). Text is
compared in normal form: lower case, every run of non-alphanumerics one space
(:func:`environments.webshop.text.normalize`).

- Attributes: a goal attribute counts once if (a) its words are a subset of the words of one
  of the product's attributes ("long lasting" matches "long lasting formula"), or else (b) it
  occurs as a whole-word phrase in the product's title, features or description. WebShop uses
  fuzzy token-set matching (rapidfuzz, > 85) and a raw substring test; these are stricter and
  exact ("machine wash" does not match "machine washable").
- Options: a goal option counts once if it equals, in normal form, one of the selected option
  values ("6.76 Fl Oz" matches "6.76 fl oz", not "6.76 fl oz (pack of 1)"). WebShop matches
  fuzzily (and normalises colour names); equality is exact, and a learner can always satisfy
  it by clicking the value the instruction names.
- Price: a product with a price range costs its lowest price.
- r_type, the product-type factor: ``title_score`` = the share of the goal title's content
  words (alphabetic, 3+ letters, not a stop or measure word) found in the bought title;
  ``query_match`` = same normalised search query; ``category_match`` = the two
  "A › B › C" product categories share at least 2 levels (the root alone is too broad). Then
  r_type = 0 if title_score = 0; 0.1 if title_score < 0.1; 1 if query_match or
  category_match or title_score > 0.2; else 0.5. A goal title without content words gives
  title_score 0.2. These are WebShop's levels and thresholds; the content words stand in for
  the nouns WebShop picks with spaCy's POS tagger.

Success is reward 1 (within 1e-9).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from environments.webshop.data import Goal, Product
from environments.webshop.text import contains_phrase, normalize, title_words

SUCCESS_TOLERANCE = 1e-9
EMPTY_TITLE_SCORE = 0.2


@dataclass(frozen=True)
class RewardParts:
    reward: float
    r_type: float
    title_score: float
    query_match: bool
    category_match: bool
    attributes_matched: int
    attributes_total: int
    options_matched: int
    options_total: int
    price_ok: bool

    @property
    def success(self) -> bool:
        return self.reward >= 1.0 - SUCCESS_TOLERANCE

    def as_info(self) -> dict[str, Any]:
        return asdict(self)


def category_levels(product_category: str) -> frozenset[str]:
    return frozenset(n for n in (normalize(level) for level in product_category.split("›")) if n)


def type_factor(goal: Goal, product: Product) -> tuple[float, float, bool, bool]:
    """(r_type, title_score, query_match, category_match)."""
    wanted = title_words(goal.name)
    title_score = len(wanted & title_words(product.title)) / len(wanted) if wanted else EMPTY_TITLE_SCORE
    query_match = bool(normalize(goal.query)) and normalize(goal.query) == normalize(product.query)
    category_match = (
        len(category_levels(goal.product_category) & category_levels(product.product_category)) >= 2
    )
    if title_score == 0.0:
        r_type = 0.0
    elif title_score < 0.1:
        r_type = 0.1
    elif query_match or category_match or title_score > 0.2:
        r_type = 1.0
    else:
        r_type = 0.5
    return r_type, title_score, query_match, category_match


def attribute_matches(goal_attributes: Iterable[str], product: Product) -> int:
    owned = [set(normalize(a).split()) for a in product.attributes]
    texts = (product.title, " ".join(product.features), product.description)
    count = 0
    for attribute in goal_attributes:
        words = set(normalize(attribute).split())
        if not words:
            continue
        if any(words <= have for have in owned) or any(contains_phrase(t, attribute) for t in texts):
            count += 1
    return count


def option_matches(goal_options: Iterable[str], selected: Iterable[str]) -> int:
    chosen = {normalize(v) for v in selected}
    return sum(1 for option in goal_options if normalize(option) in chosen)


def purchase_reward(goal: Goal, product: Product, selected: Iterable[str]) -> RewardParts:
    """The reward for buying ``product`` with the option values ``selected``."""
    r_type, title_score, query_match, category_match = type_factor(goal, product)
    n_att = attribute_matches(goal.attributes, product)
    n_opt = option_matches(goal.options, selected)
    price_ok = product.price <= goal.price_upper
    total = len(goal.attributes) + len(goal.options) + 1
    reward = r_type * (n_att + n_opt + int(price_ok)) / total
    return RewardParts(
        reward=float(reward),
        r_type=r_type,
        title_score=title_score,
        query_match=query_match,
        category_match=category_match,
        attributes_matched=n_att,
        attributes_total=len(goal.attributes),
        options_matched=n_opt,
        options_total=len(goal.options),
        price_ok=price_ok,
    )
