"""The GPU worker: warm diffusers pipelines that take jobs from the queue. Never imports FastAPI."""
