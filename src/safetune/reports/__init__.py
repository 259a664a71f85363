"""Render results.json files into Markdown/CSV tables and PNG plots; compute nothing new."""
