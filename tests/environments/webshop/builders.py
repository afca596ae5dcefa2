"""Hand-built products and goals for page and reward tests."""

from __future__ import annotations

from typing import Any

from environments.webshop.data import Goal, Product


def product(**fields: Any) -> Product:
    base: dict[str, Any] = {
        "asin": "B0TEST0001",
        "title": "Lumora Shampoo, Paraben Free, Long Lasting",
        "category": "beauty",
        "query": "shampoo",
        "product_category": "Beauty & Personal Care › Hair Care › Shampoo",
        "description": "A gentle shampoo.",
        "features": ("Gentle", "Salon grade"),
        "price": 12.99,
        "price_tag": "$12.99",
        "options": (("scent", ("lavender", "rose")), ("size", ("8 fl oz", "16 fl oz"))),
        "attributes": ("paraben free", "long lasting"),
    }
    base.update(fields)
    return Product(**base)


def goal(**fields: Any) -> Goal:
    base: dict[str, Any] = {
        "index": 0,
        "asin": "B0TEST0001",
        "instruction": "i need a paraben free and long lasting shampoo, and price lower than 20.00 dollars",
        "request": "i need a paraben free and long lasting shampoo",
        "attributes": ("paraben free", "long lasting"),
        "options": ("lavender", "8 fl oz"),
        "price_upper": 20.0,
        "name": "Lumora Shampoo, Paraben Free, Long Lasting",
        "category": "beauty",
        "query": "shampoo",
        "product_category": "Beauty & Personal Care › Hair Care › Shampoo",
    }
    base.update(fields)
    return Goal(**base)
