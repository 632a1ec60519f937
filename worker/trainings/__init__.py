"""Fine-tuning as a service: the training loop and loss, and training sessions on a warm pipeline."""
