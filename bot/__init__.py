"""keel: bot layer."""
