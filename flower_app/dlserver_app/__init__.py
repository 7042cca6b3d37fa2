"""dl-server's Flower app: entry points of dlserver_tools.flower."""
