"""The Textual dashboard: the cluster at a glance, launches, and side-by-side chats."""
