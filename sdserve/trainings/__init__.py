"""Fine-tuning as a kind of work: LoRA and textual-inversion trainings whose results are usable by name."""
