"""The broker role: routes request frames to workers and places models on them."""
