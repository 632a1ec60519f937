"""The training kind on the gateway: ``POST /v1/trainings``, datasets, names and adapters owned by keys."""
