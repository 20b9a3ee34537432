"""Tools to see assignment: statistics, drawings, anchors, the compare report."""
