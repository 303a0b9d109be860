"""``tunepp evaluate``: pair predictions with ground truth, compute every metric, write JSON/CSV and a report."""
