"""RL algorithms; importing this package registers the built-in algorithms and presets lazily."""
