"""Top-to-bottom scripts behind `llmos experiment NAME`: each trains what it needs, measures, and
writes its table (docs/ quotes them)."""
