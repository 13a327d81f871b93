"""HTML report (jinja2) and plots (matplotlib) built from a run's results table and prediction files."""
