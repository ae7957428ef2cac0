"""The benchmark harness: servers, load generation, measurements and the Markdown report."""
