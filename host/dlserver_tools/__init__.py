"""Host-side tools of dl-server: MNIST preparation, federated learning, the YOLO files."""
