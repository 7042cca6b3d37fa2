/* The file access of dl-server's batch reader with nothing else around it: for each path of the
 * list file argv[1], open, pread (64 KiB at offset 0), close, as guest/kernels/io.c does for a
 * small file; prints the number of files and their total bytes. Built for wasm32-wasi by
 * scripts/wasi_file_reads.py and run by `make bench` under the wasmtime CLI and under
 * wasmtime-py (docs/host-io.md). */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: wasi_file_reads LIST\n"); return 2; }
    FILE *list = fopen(argv[1], "r");
    if (!list) { perror(argv[1]); return 2; }
    static char path[4096], buf[1 << 16];
    long files = 0, bytes = 0;
    while (fgets(path, sizeof path, list)) {
        path[strcspn(path, "\n")] = 0;
        if (!*path) continue;
        int fd = open(path, O_RDONLY);
        if (fd < 0) { perror(path); return 1; }
        ssize_t got = pread(fd, buf, sizeof buf, 0);
        close(fd);
        if (got < 0) { perror(path); return 1; }
        files++;
        bytes += got;
    }
    printf("%ld files %ld bytes\n", files, bytes);
    return 0;
}
