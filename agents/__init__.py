"""keel: agents layer."""
