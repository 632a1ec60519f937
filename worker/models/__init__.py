"""What every kind of work runs on: warm pipelines within a memory budget, LoRAs, embeddings, schedulers."""
