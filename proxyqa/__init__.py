"""proxyqa: turns human videos into proxy QA Parquet shards for video MLLMs."""

__version__ = "0.1.0"
