"""The commands of dl-server: classifier, detect, aggregation."""
