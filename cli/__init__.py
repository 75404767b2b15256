"""The `memefly` command: on top of every tier it drives."""
