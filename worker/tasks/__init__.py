"""Task recipes: one module per task, each a short numbered recipe."""
