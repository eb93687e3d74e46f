"""Task specs; importing this package registers the built-in tasks lazily."""
