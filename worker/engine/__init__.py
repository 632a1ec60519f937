"""The worker's side of the job engine: take jobs, run them with their kind's recipe, end them, heartbeat."""
