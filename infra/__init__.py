"""What runs around the ETO algorithm, not the algorithm itself: the local production stack
(SeaweedFS, MLflow and Prefect servers), the OpenAI-compatible model server, clean stops of
long-running commands, and the ``eto`` subcommands that are not flows.

Imports go one way: ``flows`` -> ``infra`` -> ``eto_core`` -> ``environments``. Nothing here
imports ``flows`` or ``tasks``, and nothing in ``eto_core`` imports this package.
"""
