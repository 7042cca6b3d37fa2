"""componentize-py entry: the wasi:cli/run export calls dlserver.main."""

import sys

from componentize_py_types import Err

from dlserver.main import main
from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        status = main(sys.argv)
        if status != 0:
            raise Err(None)
