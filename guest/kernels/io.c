/* Whole files, for a batch of them in one call from Python (dlserver.dataset):
 *
 *   read_file: open, pread (DLK_READ_STEP bytes at a time, at offset got, until a read comes
 *   back shorter), close. The bytes land in *buf (grown by doubling *cap as needed, kept for
 *   the next file); returns 1 with *len set, or 0 where open, pread or the growth failed (the
 *   caller's reader then gives the error). */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include "kernels.h"

int dlk_read_file(const char *path, char **buf, size_t *cap, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    size_t got = 0;
    int ok = 1;
    for (;;) {
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
