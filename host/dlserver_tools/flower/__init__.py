"""dl-server on Flower (flwr 1.42 Message API): every client's training, the server's
aggregation and validation are sandboxed dl-server runs (dlserver_host.api)."""
