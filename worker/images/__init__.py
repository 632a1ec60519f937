"""Image generation, the worker's side: the runner and its numbered recipe, each task's steps, batching."""
