"""keel: storage layer."""
