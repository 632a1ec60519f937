"""Image generation, the gateway's side: create endpoints, input images, resolving defaults."""
