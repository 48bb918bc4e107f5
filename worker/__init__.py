"""The worker role: connects to a broker and hosts models, each in its own process."""
