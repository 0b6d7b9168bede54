"""Data: the embedded corpus, real-data readers, aspect buckets, the feature cache and its DataModule."""
