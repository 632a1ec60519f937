"""Image generation, the first kind of work: its requests, its job view, and its declaration (``IMAGE``)."""
