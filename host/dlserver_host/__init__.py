"""Host runner for dl-server.wasm: the FEE's command line on wasmtime-py.

cli.py parses the FEE's flags and reports; sources.py maps input/output sources
onto preopens and writes outputs back; runtime.py owns the engine, the compile
cache, the limits and the run itself; manifest.py writes the provenance record.
Shared with the tools (dlserver_tools) and scripts: atomic.py, the one way files
are replaced on the host, and darknet_output.py, the parsers of Darknet's lines.
"""
