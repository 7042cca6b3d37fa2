/* Whole files, for a batch of them in one call from Python (dlserver.dataset):
 *
 *   read_file: stat (a regular file of at most max_bytes, max_bytes < 0: any size; checked
 *   before the open, which for a FIFO would wait for a writer for ever), open, pread
 *   (DLK_READ_STEP bytes at a time, at offset got, until a read comes back shorter), close.
 *   The bytes land in *buf (grown by doubling *cap as needed, kept for the next file); returns
 *   1 with *len set, or 0 where stat, open, pread or the growth failed or the file is not
 *   regular or too long (the caller's reader then gives the error). */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "kernels.h"

int dlk_read_file(const char *path, char **buf, size_t *cap, size_t *len, long long max_bytes)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    if (max_bytes >= 0 && (long long)st.st_size > max_bytes) return 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    size_t got = 0;
    int ok = 1;
    for (;;) {
        if (max_bytes >= 0 && (long long)got > max_bytes) { ok = 0; break; } /* grown since */
        if (*cap < got + DLK_READ_STEP) {
            char *bigger = realloc(*buf, *cap * 2);
            if (!bigger) { ok = 0; break; }
            *buf = bigger;
            *cap *= 2;
        }
        ssize_t r = pread(fd, *buf + got, DLK_READ_STEP, (off_t)got);
        if (r < 0) { ok = 0; break; }
        got += (size_t)r;
        if (r < DLK_READ_STEP) break;
    }
    close(fd);
    *len = got;
    return ok;
}
