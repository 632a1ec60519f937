"""The engine's gateway side: accepting jobs of any kind, and the endpoints every kind's jobs share."""
