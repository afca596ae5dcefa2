"""``webshop``: a WebShop-compatible text shopping environment, on WebShop's data or a synthetic
catalogue in the same formats (see :mod:`environments.webshop.env`)."""

from environments.webshop.data import WebShopDataError
from environments.webshop.env import DEFAULT_MAX_STEPS, WebShopEnv
from environments.webshop.splits import eto_overlap

__all__ = ["DEFAULT_MAX_STEPS", "WebShopDataError", "WebShopEnv", "eto_overlap"]
