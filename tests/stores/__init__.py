"""Store factories for the contract suite: one module per back-end.

Each module defines ``async def make(ctx: StoreContext, tmp_path, request) -> AsyncIterator``
as an async context manager factory yielding an opened store that is empty for
this deployment. ``tests/test_store_contract.py`` runs against every name in
``KINDS``; a new back-end adds its module and its name here.
"""

KINDS = ["sql", "file", "aws", "hashicorp", "custom", "azure", "gcp"]
