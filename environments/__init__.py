"""Text environments behind one interface (:mod:`environments.base`), made by name.

Plain library code: no torch, Prefect, MLflow or boto3 imports anywhere in this package.
"""

from environments.registry import ENV_NAMES, make_env

__all__ = ["ENV_NAMES", "make_env"]
